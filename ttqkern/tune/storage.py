"""Where the tuner's Optuna studies live: a local journal file, or any RDB URL for fleets.

- default (no ``--storage``): Optuna's journal file ``<cache>/tune/kernels.journal``
  (``JournalFileBackend`` with an ``open``-based file lock): no server, safe for
  several processes on one machine, and a rerun resumes its studies;
- ``journal:PATH`` (or a path ending in ``.journal``): that journal file;
- ``sqlite:///PATH``: SQLite through SQLAlchemy (one machine; writers wait on a
  lock up to 60 s);
- any other SQLAlchemy URL (``postgresql+psycopg2://user:pw@host/db``,
  ``mysql+pymysql://...``): a server many machines share.  For these the workers
  send heartbeats (`HEARTBEAT_S`); a trial whose worker died (no heartbeat for
  ``GRACE_S``) is marked failed by the next worker and re-queued with the same
  parameters (Optuna's retry callback, at most `MAX_RETRY` times), and pooled
  connections are checked before use (``pool_pre_ping``: a server restart or an
  idle timeout does not fail a trial).
"""

from __future__ import annotations

import os
import random
import time
import warnings
from pathlib import Path

from ..diskcache import user_cache_dir

HEARTBEAT_S = 60
GRACE_S = 180
MAX_RETRY = 3


def default_path() -> Path:
    """``<ttqkern cache>/tune/kernels.journal`` (folder created)."""
    d = user_cache_dir("tune")
    d.mkdir(parents=True, exist_ok=True)
    return d / "kernels.journal"


def kind(url: str | None) -> str:
    """``journal``, ``sqlite`` or ``server`` (any other RDB URL)."""
    if url is None or url.startswith("journal:") or url.endswith(".journal"):
        return "journal"
    if url.startswith("sqlite:"):
        return "sqlite"
    if "://" not in url:
        raise ValueError(f"--storage must be journal:PATH, a .journal path or an SQLAlchemy URL, got {url!r}")
    return "server"


def describe(url: str | None) -> str:
    """The storage as a user should see it (a server URL without its password)."""
    if url is None:
        return f"journal:{default_path()}"
    if kind(url) == "server" and "@" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def open_storage(url: str | None, heartbeat_s: int | None = None):
    """The Optuna storage for ``url`` (see the module docstring); imports optuna."""
    import optuna
    from optuna.storages import RDBStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    k = kind(url)
    if k == "journal":
        path = default_path() if url is None else Path(url.removeprefix("journal:")).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if k == "sqlite":
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    hb = int(heartbeat_s or os.environ.get("TTQKERN_TUNE_HEARTBEAT_S", HEARTBEAT_S))
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 5; before: RetryFailed...
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        callbacks = (
            {"heartbeat_stale_trial_callback": retry(max_retry=MAX_RETRY)}
            if retry is not None
            else {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)}
        )
    import sqlalchemy.exc

    for attempt in range(6):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna's terms since 2.x
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=hb,
                                  grace_period=max(GRACE_S * hb // HEARTBEAT_S, 2 * hb), **callbacks)  # fmt: skip
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # workers starting together on an empty database race to create Optuna's tables
            # (PostgreSQL: a duplicate enum type); the loser finds them made on the next try
            if attempt == 5:
                raise
            time.sleep(0.5 + random.random())
        except ModuleNotFoundError as e:  # the URL's driver (psycopg2, pymysql) is not installed
            raise RuntimeError(
                f"--storage {describe(url)}: its database driver is missing ({e}); for PostgreSQL: "
                "pip install 'ttqkern[tune]' (psycopg2-binary)"
            ) from e
    raise AssertionError("unreachable")
