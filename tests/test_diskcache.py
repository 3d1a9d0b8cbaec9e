"""`ttqkern.diskcache`: the user cache folder and its best-effort atomic writes."""

from __future__ import annotations

from ttqkern import diskcache


def test_user_cache_dir_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert diskcache.user_cache_dir("sass") == tmp_path / "ttqkern" / "sass"
    assert diskcache.user_cache_dir() == tmp_path / "ttqkern"


def test_write_atomic_writes_whole_files_and_fails_quietly(tmp_path):
    path = tmp_path / "a" / "b" / "entry.z"
    assert diskcache.write_atomic(path, b"one") and path.read_bytes() == b"one"
    assert diskcache.write_atomic(path, b"two") and path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["entry.z"]  # no temporary file left
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert diskcache.write_atomic(blocked / "entry.z", b"x") is False  # its folder cannot exist
