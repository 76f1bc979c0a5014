"""``python -m pipeline.watchdog PID``: stops what process PID started when PID is killed (``cluster.
stop_local_ray_with_this_process`` runs it for a driver that started a local Ray).

Every second, while the driver lives, it notes the driver's descendants (PID and start time, from /proc). Its
stdin is a pipe from the driver, which closes when the driver ends, however it ends: "done" first means a normal
exit (Ray's own shutdown stops the cluster); otherwise the driver was killed, and the watchdog sends SIGTERM to the
processes it noted that still run (same PID and start time: no PID reuse), then SIGKILL to any left after 2 s
(Ray's agents ignore SIGTERM while they wait for the GCS)."""
from __future__ import annotations

import os
import select
import signal
import sys
import time

GRACE_S = 2.0


def stat(pid: str) -> tuple[str, str] | None:
    """(parent PID, start time) of a live process, or None (gone, or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid, *rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if state in "ZX" else (ppid, rest[17])


def descendants(root: str) -> dict[str, str]:
    """{PID: start time} of every live descendant of ``root``."""
    parent = {pid: st for pid in os.listdir("/proc") if pid.isdigit() and (st := stat(pid))}
    found, todo = {}, [root]
    while todo:
        p = todo.pop()
        for pid, (ppid, started) in parent.items():
            if ppid == p and pid not in found:
                found[pid] = started
                todo.append(pid)
    return found


def alive(seen: dict[str, str]) -> list[int]:
    """The noted processes that still run (the same start time: not a reused PID)."""
    return [int(pid) for pid, t in seen.items() if (st := stat(pid)) and st[1] == t]


def send(seen: dict[str, str], sig: int) -> None:
    for pid in alive(seen):
        try:
            os.kill(pid, sig)
        except OSError:  # gone meanwhile
            pass


def watch(root: str) -> tuple[dict[str, str], bytes]:
    """Note ``root``'s descendants every second until stdin closes -> (what was noted, what stdin said)."""
    seen, data = {}, b""
    while True:
        if select.select([sys.stdin], [], [], 1.0)[0]:
            chunk = os.read(sys.stdin.fileno(), 64)
            if not chunk:
                return seen, data
            data += chunk
            continue
        seen.update(descendants(root))
        seen.pop(str(os.getpid()), None)


def main(root: str) -> None:
    seen, said = watch(root)
    if said == b"done":
        return
    send(seen, signal.SIGTERM)
    end = time.time() + GRACE_S
    while alive(seen) and time.time() < end:
        time.sleep(0.2)
    send(seen, signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1])
