"""The shared run-record / report writer."""

import json

from ttqkern import records


def test_command_line_quotes_arguments():
    assert records.command_line("python -m ttqkern.eval", ["--text", "a b"]) == "python -m ttqkern.eval --text 'a b'"


def test_run_record_fields_and_report_files(tmp_path):
    rec = records.run_record("python -m x --y", seconds=1.234, threads_note="t")
    assert rec["command"] == "python -m x --y" and rec["seconds"] == 1.2 and rec["threads_note"] == "t"
    assert rec["threads"] >= 1 and rec["versions"]["torch"] and rec["versions"]["ttqkern"]
    assert rec["machine"]["cpu_count"] >= 1 and len(rec["load_average"]) == 3
    assert rec["git"] is None or len(rec["git"]["commit"]) == 40  # a checkout, or an installed copy
    foot = records.record_markdown(rec)
    assert foot.startswith("Command: `python -m x --y`") and "threads" in foot
    paths = records.write_report(tmp_path / "sub" / "r", {"run": rec, "rows": [1]}, "# t")
    assert [p.name for p in paths] == ["r.json", "r.md"]
    assert json.loads(paths[0].read_text())["rows"] == [1] and paths[1].read_text() == "# t\n"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["r.json", "r.md"]  # no temp files left
