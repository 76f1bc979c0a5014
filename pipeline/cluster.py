"""Ray: connecting (token authentication, one-line errors), stopping a local cluster with its driver
(``watchdog``), Ray Data's settings for the chains, torch's threads in an actor, what the cluster has."""
from __future__ import annotations

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
    if not address:  # the watchdog first: a kill while Ray starts leaves nothing either
        stop = stop_local_ray_with_this_process()
        try:
            ray.init(include_dashboard=False)
        except BaseException:  # failed, or Ctrl-C: what it had started stops, and the watchdog ends
            stop()
            raise
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


def stop_local_ray_with_this_process():
    """The local cluster this process is about to start stops when the process ends, even by SIGKILL, even while
    Ray starts: call it just before ``ray.init``. On a normal exit Ray's own shutdown stops it; a killed driver
    cannot, and Ray's agents and workers would then wait a minute for a GCS that is gone. So a watchdog process
    (Linux: it reads /proc; ``pipeline.watchdog``) holds a pipe from this one and, if the pipe closes without a
    "done", stops what this process had started. Returns what to call if ``ray.init`` fails: the watchdog stops
    what Ray had started and ends, and this waits for it (a few seconds at most)."""
    import atexit
    import os
    import subprocess
    import sys

    if not os.path.isdir("/proc"):
        return lambda: None
    dog = subprocess.Popen([sys.executable, "-m", "pipeline.watchdog", str(os.getpid())], stdin=subprocess.PIPE,
                           start_new_session=True)  # not in this terminal's process group: Ctrl-C is ours

    def say(word: bytes) -> None:
        try:
            dog.stdin.write(word)
            dog.stdin.close()
        except OSError:
            pass

    def done():
        say(b"done")

    def stop():
        atexit.unregister(done)
        say(b"stop")
        try:
            dog.wait(timeout=10)
        except subprocess.TimeoutExpired:  # it ends by itself
            pass

    atexit.register(done)  # runs before Ray's own atexit shutdown (registered on `import ray`, earlier)
    return stop


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
    rather than spin (OMP_WAIT_POLICY=PASSIVE), so actors that share cores do not slow each other down (the face
    actor, the S2D actor of a small model); otherwise libgomp's default, spin briefly then sleep, which a large
    model that has the cores to itself runs faster with. Returns torch."""
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


def node_id() -> str:
    """This process's Ray node id ("" outside Ray: ``get_runtime_context`` alone would start a local Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def pick_device(device: str) -> str:
    """"cuda" or "cpu" for ``device`` on the cluster this process joined (auto: cuda where it has a whole GPU).
    ``cuda`` on a cluster without a GPU: ClusterError, before any work (each actor would fail on its own)."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    if device == "cuda" and gpus < 1:
        raise ClusterError("--device cuda, but the cluster has no GPU: use --device cpu (or auto), or add a GPU node")
    if device != "auto":
        return device
    return "cuda" if gpus >= 1 else "cpu"
