"""Ray: connecting, what the cluster has, how many face and S2D actors a run gets (``plan_actors``), and the
drivers' loop over a chain's passes (``run_passes``: again on the nodes left when one dies)."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

BLOCK_BYTES = 4 << 20  # Ray Data output blocks: a few clips each, so clips reach S2D as they are cut
OBJECT_STORE_BUDGET = 1 << 30  # what a run's blocks may hold in the object store at once (bounded queues)


def verbose() -> bool:
    """Ray's own messages are shown (``s2d ... -v`` sets S2D_VERBOSE=1); by default they are not."""
    import os

    return os.environ.get("S2D_VERBOSE", "") not in ("", "0")


class ClusterError(RuntimeError):
    """The cluster cannot be reached or refused us; the message says what to do, in one line."""


def token_source() -> str | None:
    """Where Ray would read its auth token (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``, in
    Ray's order), or None if nowhere."""
    import os
    from pathlib import Path

    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return os.environ["RAY_AUTH_TOKEN_PATH"]
    default = Path.home() / ".ray" / "auth_token"
    return str(default) if default.is_file() else None


NO_TOKEN = ("set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN to the head's token (`ray get-auth-token` on the head "
            "prints it), or copy the head's ~/.ray/auth_token to this machine")


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (a running cluster: ``auto``, ``HOST:PORT``, ``ray://HOST:10001``; else
    ``RAY_ADDRESS``, as a Ray Jobs entrypoint has), or start a local Ray; nothing if this process is connected
    already. The one place the project starts or joins Ray. Unless ``verbose()``, Ray's console loggers show errors
    only (``quiet_loggers``).

    Token authentication: a plain ``ray start --head`` turns it on when a token exists (``~/.ray/auth_token``, made
    by any earlier local Ray), but Ray itself uses the token only for ``address="auto"``. So when this process has
    a token (``token_source``) and ``RAY_AUTH_MODE`` is unset, it is used for any address; a cluster without
    authentication accepts it too. A refused or unreachable cluster raises ``ClusterError`` with what to set."""
    import os

    import ray

    if ray.is_initialized():
        return
    if not verbose():
        quiet_loggers()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        ray.init(include_dashboard=False)
        stop_local_ray_with_this_process()
        return
    if "RAY_AUTH_MODE" not in os.environ and token_source():
        from ray._raylet import Config

        os.environ["RAY_AUTH_MODE"] = "token"  # this process and what it starts
        Config.initialize("")  # Ray's own switch (ray._private.authentication: _enable_token_auth)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    except Exception as exc:  # ConnectionError, AuthenticationError, ...: one line, what to do
        text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if token_source() is None:  # Ray says only "failed to connect" when the head wants a token we lack
            hint = ("if the head uses token authentication (a plain `ray start --head` does, once the head has "
                    f"~/.ray/auth_token): {NO_TOKEN}")
        else:
            hint = (f"check the address (`ray status` on the head), that this machine reaches it, and that the "
                    f"token in {token_source()} is the head's (`ray get-auth-token` there)")
        raise ClusterError(f"cannot connect to the Ray cluster at {address} ({text}); {hint}") from None


# The watchdog's program (a separate small process). Every second, while the driver lives, it notes the driver's
# descendants (PID and start time). The pipe from the driver closes when the driver ends, however it ends: "done"
# first means a normal exit (Ray's own shutdown stops the cluster); otherwise the driver was killed, and the
# watchdog sends SIGTERM to the processes it noted that still run (same PID and start time: no PID reuse), then
# SIGKILL to any left after 2 s (Ray's agents ignore SIGTERM while they wait for the GCS).
_WATCHDOG = """
import os, select, signal, sys, time
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid, *rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if state in "ZX" else (ppid, rest[17])
def descendants(root):
    parent = {pid: st for pid in os.listdir("/proc") if pid.isdigit() and (st := stat(pid))}
    found, todo = {}, [root]
    while todo:
        p = todo.pop()
        for pid, (ppid, started) in parent.items():
            if ppid == p and pid not in found:
                found[pid] = started
                todo.append(pid)
    return found
seen, data = {}, b""
while True:
    if select.select([sys.stdin], [], [], 1.0)[0]:
        chunk = os.read(sys.stdin.fileno(), 64)
        if chunk:
            data += chunk
            continue
        break
    seen.update(descendants(sys.argv[1]))
    seen.pop(str(os.getpid()), None)
if data == b"done":
    sys.exit()
alive = lambda: [int(pid) for pid, t in seen.items() if (st := stat(pid)) and st[1] == t]
def send(sig):
    for pid in alive():
        try:
            os.kill(pid, sig)
        except OSError:  # gone meanwhile
            pass
send(signal.SIGTERM)
end = time.time() + 2
while alive() and time.time() < end:
    time.sleep(0.2)
send(signal.SIGKILL)
"""


def stop_local_ray_with_this_process() -> None:
    """The local cluster this process just started stops when the process ends, even by SIGKILL. On a normal exit
    Ray's own shutdown stops it; a killed driver cannot, and Ray's agents would then wait a minute for a GCS that
    is gone. So a watchdog process (Linux: it reads /proc) holds a pipe from this one and, if the pipe closes
    without a "done", stops what this process had started."""
    import atexit
    import os
    import subprocess
    import sys

    if not os.path.isdir("/proc"):
        return
    dog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid())], stdin=subprocess.PIPE,
                           start_new_session=True)  # not in this terminal's process group: Ctrl-C is ours

    def done():
        try:
            dog.stdin.write(b"done")
            dog.stdin.close()
        except OSError:
            pass

    atexit.register(done)  # runs before Ray's own atexit shutdown (registered earlier)


def quiet_loggers() -> None:
    """Ray's and Ray Data's console handlers at ERROR (start-up lines, the token-auth notice, Ray Data's plans and
    "Progress bars disabled"); their log files under the session folder keep everything."""
    import logging

    import ray.data  # noqa: F401  (it sets up its loggers on import)

    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
                handler.setLevel(logging.ERROR)


def chain_context() -> None:
    """This process's Ray Data settings for the annotate and faces chains: small output blocks (clips stream to
    S2D as they are cut), a bounded share of the object store (bounded queues), items kept pickled, our own
    progress bar instead of Ray Data's."""
    import ray
    from ray.data import ExecutionResources

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.verbose_progress = False
    ctx.enable_fallback_to_arrow_object_ext_type = True
    ctx.target_max_block_size = BLOCK_BYTES
    store = ray.cluster_resources().get("object_store_memory", 4 * OBJECT_STORE_BUDGET)
    ctx.execution_options.resource_limits = ExecutionResources.for_limits(
        object_store_memory=min(OBJECT_STORE_BUDGET, store / 4))


def torch_threads(n: int, sleep: bool = True):
    """In an actor, before anything imports torch: ``n`` intra-op threads. ``sleep``: waiting threads sleep at once
    rather than spin (OMP_WAIT_POLICY=PASSIVE), so actors that share cores do not slow each other down: the face
    actor, and the S2D actor of a small model (measured on 2 cores, 60 s of video and 120 tiny clips side by side:
    41 s with spinning threads, 19 s without; 300 s with random-tiny: 100 s passive, 155 s with libgomp's default
    spin). Otherwise (the S2D actor of a real model, the bottleneck on CPU at ~4 s per ViT-B clip) libgomp's
    default: spin briefly, then sleep (ViT-B on 2 cores in the chain: 4.8 s per clip, 5.4 s passive).
    Returns torch."""
    import os

    if sleep:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(max(1, n))
    return torch


def resources() -> tuple[float, float, list[float]]:
    """(CPUs, GPUs, CPUs of each alive node) of the connected cluster."""
    import ray

    alive = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    nodes = [r.get("CPU", 0.0) for r in alive]
    return max(1.0, sum(nodes)), sum(r.get("GPU", 0.0) for r in alive), [c for c in nodes if c > 0] or [1.0]


class NodeLost(KeyboardInterrupt):
    """A node of the cluster died while a chain ran on it: raised in the driver's main thread by ``NodeWatch``."""


def lost(exc: BaseException) -> str | None:
    """When the chain broke because Ray lost a node, a worker process or objects on them (not because of our code),
    so its work can be done again on what is left: the error's first line; else None."""
    from ray.exceptions import (LocalRayletDiedError, NodeDiedError, ObjectLostError, RayActorError,
                                WorkerCrashedError)

    if isinstance(exc, RayActorError):
        ray_lost = not exc.actor_init_failed
    else:
        ray_lost = isinstance(exc, (LocalRayletDiedError, NodeDiedError, ObjectLostError, WorkerCrashedError))
    return (str(exc).splitlines()[0] if str(exc) else type(exc).__name__) if ray_lost else None


PASSES = 3  # a chain runs again on the nodes left after a node dies, at most this many times in all


class NodeWatch:
    """``with NodeWatch() as watch:`` while the block runs, a thread asks Ray every ``interval_s`` which nodes are
    alive; when one that was alive at the start has died, ``watch.lost`` says which and the main thread is
    interrupted, wherever it waits. (A chain whose actors were on a dead node would otherwise wait for ever: Ray
    restarts them only where their CPUs fit, and on the nodes left they may not; the driver then runs the chain
    again, planned on what is left.) The interruption is SIGUSR1 raising ``NodeLost``, a KeyboardInterrupt: Ray's
    waits check for signals and let only that through, as a plain KeyboardInterrupt, so the caller tells a lost
    node from Ctrl-C by ``watch.lost``. Outside the main thread the block runs unwatched."""

    def __init__(self, interval_s: float = 1.0):
        self.interval_s, self.lost = interval_s, None

    def __enter__(self):
        import signal
        import threading

        import ray

        self.active = threading.current_thread() is threading.main_thread()
        if not self.active:
            return self
        self.alive = {n["NodeID"]: n.get("NodeManagerAddress", "") for n in ray.nodes() if n.get("Alive")}
        self.stop = threading.Event()
        self.previous = signal.signal(signal.SIGUSR1, self._raise)
        self.thread = threading.Thread(target=self._watch, name="node-watch", daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        import signal
        import threading

        import ray

        while not self.stop.wait(self.interval_s):
            try:
                now = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            except Exception:  # the GCS did not answer this time: ask again
                continue
            dead = [f"{i[:8]} ({ip})" for i, ip in self.alive.items() if i not in now]
            if dead:
                self.lost = f"Ray node {', '.join(dead)} died while the run was on it"
                signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
                return

    def _raise(self, signum, frame):
        if self.lost and not self.stop.is_set():
            raise NodeLost(self.lost)

    def __exit__(self, *exc):
        import signal

        if self.active:
            self.stop.set()
            self.thread.join()
            signal.signal(signal.SIGUSR1, self.previous)
        return False


def run_passes(chain, take, again) -> tuple[str, str] | None:
    """The drivers' loop: run ``chain()`` (a Ray Data chain over the videos not done yet) and give each item it
    yields to ``take``. When a node dies or Ray loses a worker or objects (``lost``), the chain is planned and run
    again on the nodes left, ``PASSES`` times in all; ``again(why)`` is called before each new pass. None when a
    pass ran to its end; else (status, message) for the videos not done: "interrupted" on Ctrl-C or SIGTERM (taken
    once the item being recorded is done: ``deferred_signals``), or "error" when the chain itself broke (its
    traceback printed) or lost work in every pass."""
    import traceback

    for attempt in range(1, PASSES + 1):
        watch = NodeWatch()
        try:
            with watch:
                for batch in chain().iter_batches(batch_size=None, batch_format="numpy"):
                    for item in batch["item"]:
                        with deferred_signals():  # a timeline or cache entry is never left half-recorded
                            take(item)
            return None
        except KeyboardInterrupt:
            if watch.lost is None:  # Ctrl-C or SIGTERM: what is done stays
                return "interrupted", "the run was interrupted before this video was done; run again"
            why = watch.lost
        except Exception as exc:
            why = lost(exc)
            if why is None:  # our code or the input broke the chain: no pass would end otherwise
                traceback.print_exc()
                return "error", f"pipeline: {type(exc).__name__}: {exc}"
        if attempt < PASSES:
            again(why)
    return "error", f"pipeline: {why} ({PASSES} passes); run again"  # work was lost in every pass


@contextmanager
def deferred_signals():
    """``with deferred_signals():`` Ctrl-C, SIGTERM and ``NodeWatch``'s SIGUSR1 that arrive while the block runs
    are held and raised, in their order, once it has ended, to the handlers it found (main thread only: elsewhere
    the block runs as it is)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    found = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    found = {s: h for s, h in found.items() if h is not None}  # None: set outside Python, left as it is
    for s in found:
        signal.signal(s, lambda n, _: held.append(n))
    try:
        yield
    finally:
        for s, handler in found.items():
            signal.signal(s, handler)
        for n in held:
            signal.raise_signal(n)


def stop_on_sigterm() -> None:
    """SIGTERM (e.g. a job scheduler ending the run) stops the driver loop like Ctrl-C does (main thread only)."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def node_id() -> str:
    """This process's Ray node id ("" outside Ray: ``get_runtime_context`` alone would start a local Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import ray

    return "cuda" if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"


@dataclass(frozen=True)
class Pool:
    """One actor pool: how many actors, what each reserves, and how many threads each runs."""

    size: int
    num_cpus: float
    num_gpus: float = 0.0
    threads: int = 1

    def args(self, tasks_per_actor: int | None = None) -> dict:
        """The map_batches keywords."""
        from ray.data import ActorPoolStrategy

        return dict(compute=ActorPoolStrategy(size=self.size, max_tasks_in_flight_per_actor=tasks_per_actor),
                    num_cpus=self.num_cpus, num_gpus=self.num_gpus)


def threads_each(node_cpus: list[float], n: int) -> int:
    """Threads for each of ``n`` actors spread over the nodes: the smallest node's cores, shared among the actors
    it holds."""
    return max(1, int(min(node_cpus) // math.ceil(n / len(node_cpus))))


def plan_actors(cpus: float, gpus: float, node_cpus: list[float], emotions: bool) -> dict[str, Pool]:
    """The face pool (one unit of work per actor at a time) and, with ``emotions``, the S2D pool; both fit on the
    cluster at once, so neither can starve the other.

    CPU only: one S2D actor per 8 CPUs (at least one), reserving one CPU but running as many lanes (threads) as its
    node's share of cores: once the face work is done no core idles. The face actors take the other CPUs, one
    each, with the node's cores shared among them as threads (on 2 cores one face actor with 2 threads; on 16,
    14 single-threaded ones: many videos and shards side by side). With GPUs: one S2D actor per GPU (half of it
    reserved, so the face actors share the other halves) and one CPU for each.
    """
    g = int(gpus)
    if not emotions:
        n = max(1, int(cpus))
        return {"faces": Pool(n, min(1.0, cpus / n), min(0.5, g / n) if g else 0.0, threads_each(node_cpus, n))}
    m = g if g else max(1, int(cpus // 8))
    s2d = Pool(m, min(1.0, cpus / (m + 1)), 0.5 if g else 0.0, threads_each(node_cpus, m))
    n = max(1, int((cpus - m * s2d.num_cpus) // 1))
    faces = Pool(n, min(1.0, (cpus - m * s2d.num_cpus) / n), min(0.5, 0.5 * g / n) if g else 0.0,
                 threads_each(node_cpus, n))
    return {"faces": faces, "s2d": s2d}


def data_task_cpus(cpus: float, workers: int, each: float) -> float:
    """What each Ray Data task of a training or evaluation run reserves: one CPU, or what the workers leave when that
    is less (Ray Data's default of one CPU per task never starts on a 1-CPU cluster whose workers hold 0.5)."""
    return max(0.01, min(1.0, math.floor((cpus - workers * each) * 100) / 100))


def plan_workers(workers: int, cpus_per_worker: float, gpus_per_worker: float, cpus: float,
                  gpus: float) -> tuple[float, str | None]:
    """-> (CPUs each worker reserves: Ray Train's workers, evaluate's model actors; a line saying what was changed,
    or None). The data pipeline (Ray Data: decoding, augmenting) needs CPUs of its own, or the workers wait for
    batches that are never made (2 workers x 1 CPU on 2 CPUs hung): it keeps one CPU (half of a 1-CPU cluster), and
    the workers share the rest when the asked reservation does not fit. ValueError, before any work, where no plan
    fits."""
    if gpus_per_worker and workers * gpus_per_worker > gpus + 1e-9:
        raise ValueError(f"--workers {workers} x --gpus-per-worker {gpus_per_worker:g} needs "
                         f"{workers * gpus_per_worker:g} GPUs; the cluster has {gpus:g}")
    data = min(1.0, cpus / 2)
    if workers * cpus_per_worker <= cpus - data + 1e-9:
        return cpus_per_worker, None
    each = math.floor((cpus - data) / workers * 100) / 100
    if each < 0.1:
        raise ValueError(f"--workers {workers} do not fit on the cluster's {cpus:g} CPUs with {data:g} left for the "
                         f"data pipeline: use at most {max(1, int((cpus - data) / 0.1))} workers, or more CPUs")
    return each, (f"{workers} workers x {cpus_per_worker:g} CPUs would leave the data pipeline "
                  f"{max(0.0, cpus - workers * cpus_per_worker):g} of the cluster's {cpus:g} CPUs: each worker "
                  f"reserves {each:g} CPUs instead, {data:g} stay for the data pipeline")

