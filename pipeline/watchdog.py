"""``python -m pipeline.watchdog PID``: stops what process PID started when PID is killed (``cluster.init_ray``
runs it, through ``cluster.stop_local_ray_with_this_process``, for a driver that starts a local Ray, before
``ray.init``: a kill at any moment of Ray's start leaves nothing).

While the driver lives it notes the driver's descendants (PID and start time, from /proc): every 0.2 s for the
first minute (Ray starts, then its first workers and actors), then every second. Its stdin is a pipe from the
driver, which closes when the driver ends, however it ends: "done" first means a normal exit (Ray's own shutdown
stops the cluster); "stop" means the driver lives on but Ray did not start (``ray.init`` failed: what it started
is stopped); nothing means the driver was killed. Then the watchdog completes what it noted (``collect``), sends
SIGTERM to the noted processes that still run (same PID and start time: no PID reuse), collects again, and sends
SIGKILL to any left after 2 s (Ray's agents ignore SIGTERM while they wait for the GCS).

What a last look can miss: Ray kills the raylet with the driver (fate sharing, PR_SET_PDEATHSIG), within
milliseconds, and the agents and workers it started since the last look are then re-parented to the reaper (PID
1 or the nearest subreaper), so they are no one's descendants. The reaper is the watchdog's new parent too (its
parent was the driver), so ``collect`` also takes the reaper's children started after the watchdog that are in
the driver's process group (the raylet's agents) or write to the driver's Ray session's logs (its workers, in a
group of their own, have stdout and stderr in ``.../session_<date>_<driver PID>/logs``).

CPU: a look reads every /proc/PID/stat. Measured on a 2-core VM with 80-100 processes: ~1.3 ms of CPU a look
alone, ~1.9 ms during an ``s2d annotate`` run (its CPU time over its looks), so ~1% of a core while it looks
every 0.2 s and ~0.2% after the first minute; ``collect`` runs only after the driver ended."""
from __future__ import annotations

import os
import re
import select
import signal
import sys
import time

GRACE_S = 2.0
FAST_S, FAST_FOR_S, SLOW_S = 0.2, 60.0, 1.0  # look every FAST_S for the first FAST_FOR_S, then every SLOW_S


def stat(pid: str) -> tuple[str, str] | None:
    """(parent PID, start time) of a live process, or None (gone, or a zombie)."""
    row = _row(pid)
    return None if row is None or row[3] in "ZX" else row[:2]


def _row(pid: str) -> tuple[str, str, str, str] | None:
    """(parent PID, start time, process group, state) of a process, or None (gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid, group, *rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return ppid, rest[16], group, state


def table() -> dict[str, tuple[str, str, str, str]]:
    """{PID: (parent PID, start time, process group, state)} of every process, zombies too: a multi-threaded
    process that is ending (a killed raylet) can show as a zombie while a thread of it still has its children."""
    return {pid: row for pid in os.listdir("/proc") if pid.isdigit() and (row := _row(pid))}


def descendants(root: str | list[str], procs: dict | None = None) -> dict[str, str]:
    """{PID: start time} of every descendant of ``root`` (of each of several roots, if a list), zombies too."""
    procs = table() if procs is None else procs
    children: dict[str, list[str]] = {}
    for pid, (ppid, *_) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found: dict[str, str] = {}
    todo = [root] if isinstance(root, str) else list(root)
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in found:
                found[pid] = procs[pid][1]
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


def in_session(pid: str, root: str) -> bool:
    """Whether ``pid``'s stdout or stderr is a file of the Ray session that ``root`` started (named after it)."""
    for fd in (1, 2):
        try:
            if re.search(rf"/session_[^/]*_{root}/", os.readlink(f"/proc/{pid}/fd/{fd}")):
                return True
        except OSError:
            pass
    return False


def collect(seen: dict[str, str], root: tuple[str, str], group: str | None, reaper: str | None,
            since: int) -> None:
    """Add to ``seen`` what it misses, until a look finds nothing new: the descendants of ``root`` (PID, start
    time), if it is still there, and of the noted processes still there; with a ``reaper``, also its children
    started at ``since`` or later that are in process group ``group`` or in ``root``'s Ray session, and theirs."""
    me = str(os.getpid())
    while True:
        procs = table()
        roots = [pid for pid, t in [root, *seen.items()] if pid in procs and procs[pid][1] == t]
        if reaper:
            roots += [pid for pid, (ppid, t, g, _) in procs.items() if ppid == reaper and int(t) >= since
                      and pid not in seen and pid != me and (g == group or in_session(pid, root[0]))]
        found = {**{pid: procs[pid][1] for pid in roots if pid != root[0]}, **descendants(roots, procs)}
        new = {pid: t for pid, t in found.items() if pid not in seen and pid != me}
        if not new:
            return
        seen.update(new)


def watch(root: str) -> tuple[dict[str, str], bytes]:
    """Note ``root``'s descendants (every FAST_S, then every SLOW_S) until stdin closes -> (what was noted, what
    stdin said)."""
    seen, data, me, start = {}, b"", str(os.getpid()), time.monotonic()
    while True:
        seen.update(descendants(root))
        seen.pop(me, None)
        wait = FAST_S if time.monotonic() - start < FAST_FOR_S else SLOW_S
        while select.select([sys.stdin], [], [], wait)[0]:
            chunk = os.read(sys.stdin.fileno(), 64)
            if not chunk:
                return seen, data
            data += chunk


def main(root: str) -> None:
    parent, me = os.getppid(), stat(str(os.getpid()))
    since = int(me[1]) if me else 0
    first = _row(root)
    group, root_start = (first[2], first[1]) if first else (None, "")
    seen, said = watch(root)
    if said == b"done":
        return
    reaper = None
    if said != b"stop" and parent == int(root):  # killed: the reaper adopts this process as it adopts Ray's
        end = time.time() + 1.0
        while os.getppid() == parent and time.time() < end:
            time.sleep(0.01)
        reaper = str(os.getppid()) if os.getppid() != parent else None
    collect(seen, (root, root_start), group, reaper, since)
    send(seen, signal.SIGTERM)
    end = time.time() + GRACE_S
    while alive(seen) and time.time() < end:
        time.sleep(0.2)
    collect(seen, (root, root_start), group, reaper, since)
    send(seen, signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1])
