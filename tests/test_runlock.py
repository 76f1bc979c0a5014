"""The run-folder lock: a second run on the same folder stops with who holds it; a killed holder blocks nothing."""
from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.runlock import LOCK_NAME, RunFolderBusy, run_lock

REPO = Path(__file__).resolve().parents[1]
HOLD = """import sys, time
from pipeline.runlock import run_lock
with run_lock(sys.argv[1], "s2d annotate"):
    print("held", flush=True)
    time.sleep(120)
"""
TAIL = "): wait for it to finish, or use another --out"


def test_a_second_process_is_told_who_holds_the_folder_and_a_killed_holder_blocks_nothing(tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunFolderBusy) as caught:
            with run_lock(out, "s2d faces"):
                pytest.fail("took a held lock")
        said = str(caught.value)
        assert said.startswith(f"{out} is in use by s2d annotate (pid {holder.pid} on {socket.gethostname()} since ")
        assert said.endswith(TAIL) and "\n" not in said
        holder.kill()  # SIGKILL: no cleanup runs, the lock file stays, the kernel drops the lock
        holder.wait()
        assert (out / LOCK_NAME).exists()
        with run_lock(out, "s2d faces"):
            held = json.loads((out / LOCK_NAME).read_text())
            assert held["pid"] == os.getpid() and held["command"] == "s2d faces" and held["host"]
        assert list(out.iterdir()) == []  # released: the lock file is gone
    finally:
        holder.kill()
        holder.wait()


def test_the_same_process_is_busy_while_it_holds_and_free_after(tmp_path):
    with run_lock(tmp_path, "s2d annotate"):
        with pytest.raises(RunFolderBusy, match=rf"^{tmp_path} is in use by s2d annotate \(pid {os.getpid()} on "):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):
        pass
    with run_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).exists()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("content", [b"", b'{"pid": 12', b"[1, 2]"])
def test_a_holder_that_wrote_nothing_readable_is_still_in_use(tmp_path, content):
    """A holder between taking the lock and writing who it is, or a garbled file: still "in use"."""
    (tmp_path / LOCK_NAME).write_bytes(content)
    with open(tmp_path / LOCK_NAME, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunFolderBusy) as caught:
            with run_lock(tmp_path):
                pass
    assert str(caught.value) == f"{tmp_path} is in use by another run: wait for it to finish, or use another --out"
    with run_lock(tmp_path):  # the other let go
        pass


def test_a_uri_folder_is_not_locked():
    ran = []
    with run_lock("s3://bucket/out"):
        with run_lock("s3://bucket/out"):
            ran.append(1)
    assert ran == [1]
