"""The drivers' loop over a chain's passes: ``run_passes`` runs the chain again on the nodes left when one dies
(``NodeWatch``), records each item with signals held (``deferred_signals``), and stops cleanly on Ctrl-C or
SIGTERM (``stop_on_sigterm``)."""
from __future__ import annotations

from contextlib import contextmanager

from .storage import NoSpace


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
    yields to ``take`` (whose ``storage.NoSpace`` stops the run: it is raised). When a node dies or Ray loses a
    worker or objects (``lost``), the chain is planned and run again on the nodes left, ``PASSES`` times in all;
    ``again(why)`` is called before each new pass. None when a pass ran to its end; else (status, message) for the
    videos not done: "interrupted" on Ctrl-C or SIGTERM (taken once the item being recorded is done:
    ``deferred_signals``), or "error" when the chain itself broke (its traceback printed) or lost work in every
    pass."""
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
            if isinstance(exc, NoSpace):  # a write of ours: the run stops (one line), a re-run goes on
                raise
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
