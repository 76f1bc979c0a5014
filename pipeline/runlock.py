"""One run at a time in a run folder: ``with run_lock(out, what="s2d annotate"):`` holds an exclusive lock on the
hidden file ``<out>/.s2d.lock`` (``fcntl.flock``, LOCK_EX | LOCK_NB) for the run. A second run on the same folder
stops at once with ``RunFolderBusy``, one line saying who holds it; it does not wait.

The kernel drops the lock when its holder exits, killed or not, so a stale lock never blocks a run: a lock file
left by a killed run is taken over. The holder writes {pid, host, command, started} (JSON) into the file once it
holds the lock, and removes the file when it lets go. Locks are per open file, so a second ``run_lock`` on the
same folder in the same process is busy too. Over NFS, Linux maps flock onto the server's byte-range locks.

A URI folder (``s3://...``) is not locked: object stores have no lock, and two runs there are not kept apart.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from . import storage

LOCK_NAME = ".s2d.lock"


class RunFolderBusy(RuntimeError):
    """The run folder is locked by another run (or another ``run_lock`` in this process)."""


@contextlib.contextmanager
def run_lock(folder, what: str = "s2d annotate") -> Iterator[None]:
    """Hold the run folder's lock while the block runs (creates the folder); ``RunFolderBusy`` if another holds it.
    A URI folder is not locked (see the module docstring): the block just runs."""
    if storage.is_uri(folder):
        yield
        return
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderBusy(_busy(folder, path)) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # the file in the folder, not one its last holder removed before we locked it
        os.close(fd)
    try:
        held = {"pid": os.getpid(), "host": socket.gethostname(), "command": what,
                "started": datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)  # what a killed holder left
        os.write(fd, json.dumps(held).encode())
        yield
    finally:
        path.unlink(missing_ok=True)  # still locked: a taker that opened it sees it gone and opens a new one
        os.close(fd)


def _busy(folder: Path, path: Path) -> str:
    """The line "OUT is in use by ...", from what the holder wrote (maybe nothing yet, or a garbled file)."""
    try:
        held = json.loads(path.read_text())
        held = held if isinstance(held, dict) else {}
    except (OSError, ValueError):
        held = {}
    known = [f"pid {held['pid']}" if held.get("pid") else "", f"on {held['host']}" if held.get("host") else "",
             f"since {held['started']}" if held.get("started") else ""]
    who = " ".join(k for k in known if k)
    return (f"{folder} is in use by {held.get('command') or 'another run'}{f' ({who})' if who else ''}: "
            "wait for it to finish, or use another --out")
