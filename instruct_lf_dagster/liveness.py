"""What keeps a headless run from waiting on a dead one: one `instruct-lf run` per data directory at a time, runs
whose process died failed and their pool slots freed, and a wait for a slot another live run holds said aloud.

Dagster's own run monitoring (the daemon, `run_monitoring` in dagster.yaml) looks after runs a launcher started;
runs executed in process by `instruct-lf run` are tagged with their host and pid, so the next one can tell that
their process has gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg

PID_TAG, HOST_TAG = "instruct_lf/pid", "instruct_lf/host"
LOCK_FILE = ".instruct-lf-run.lock"
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
log = logging.getLogger(__name__)
Say = Callable[[str], None]


def process_tags() -> dict[str, str]:
    """Tags that say which process executes a run in process (so a later run can tell it died)."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def dead_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Unfinished runs that this machine executed in a process that no longer exists."""
    here = socket.gethostname()
    runs = instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED))
    return [
        run
        for run in runs
        if run.tags.get(HOST_TAG) == here
        and run.tags.get(PID_TAG, "").isdigit()
        and int(run.tags[PID_TAG]) != os.getpid()
        and not _alive(int(run.tags[PID_TAG]))
    ]


def release_dead_runs(instance: dg.DagsterInstance, say: Say) -> list[str]:
    """Fail every run whose process died and free the pool slots it held; the ids of those runs."""
    released = []
    for run in dead_runs(instance):
        pid = run.tags[PID_TAG]
        instance.report_run_failed(
            run, f"its process (pid {pid}) ended without finishing it; failed by a later run"
        )
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        say(
            f"run {run.run_id} ({run.job_name}) had died with its process {pid}: marked failed, its pool slots freed"
        )
        released.append(run.run_id)
    return released


def held_slots(instance: dg.DagsterInstance) -> dict[str, set[str]]:
    """Pool -> the runs holding its slots, for pools whose slots are all taken."""
    storage = instance.event_log_storage
    full = {}
    for pool in sorted(storage.get_concurrency_keys()):
        info = storage.get_concurrency_info(pool)
        if info.claimed_slots and info.limit is not None and len(info.claimed_slots) >= info.limit:
            full[pool] = info.active_run_ids
    return full


def wait_for_pools(instance: dg.DagsterInstance, say: Say, every: float = 10.0, poll: float = 1.0) -> None:
    """Wait, without spinning a core, until no pool is full; say which runs hold them every `every` seconds.

    Dagster's in-process executor would otherwise wait for the slot itself, silently. Interrupts (Ctrl-C,
    SIGTERM) stop the wait at once: it sleeps in short steps in the main thread.
    """
    said = 0.0
    while held := held_slots(instance):
        if time.monotonic() - said >= every:
            holders = "; ".join(
                f"pool {pool!r} held by run(s) {', '.join(sorted(runs))}" for pool, runs in held.items()
            )
            say(f"waiting for {holders} (see them in the Dagster UI; Ctrl-C stops waiting)")
            said = time.monotonic()
        time.sleep(poll)


@contextlib.contextmanager
def home_lock(home: Path, say: Say, every: float = 10.0, poll: float = 0.5) -> Iterator[None]:
    """Hold the data directory for one `instruct-lf run`; a second one waits, saying for which process.

    An OS lock (flock) rather than a marker file: it goes with the process that held it, so a killed run
    never leaves the directory locked.
    """
    home.mkdir(parents=True, exist_ok=True)
    path = home / LOCK_FILE
    with path.open("a+") as handle:
        said = 0.0
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - said >= every:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    say(f"waiting for {holder}, which is running on {home} (Ctrl-C stops waiting)")
                    said = time.monotonic()
                time.sleep(poll)
        handle.seek(0)
        handle.truncate()
        handle.write(f"instruct-lf run (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
