"""A real Ray cluster of several nodes on this machine, for the cluster tests: ``ray start --head`` and
``ray start --address`` on 127.0.0.1, each node with its own temp dir and its own ports, token authentication on
(a token in a temporary HOME's ``~/.ray/auth_token``, where ``ray get-auth-token --generate`` puts it; the user's
own HOME is never touched). ``stop`` and ``kill_node`` signal only the processes these nodes started, found by
their temp dir in the command line (never ``ray stop``, which would stop every Ray on the machine)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


# The GCS asks each raylet every 3 s whether it lives and counts a node dead after 5 missed answers (Ray's
# defaults): ~15 s before a killed node's work moves. These nodes are asked every second and are dead after 3.
NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _processes(marker: str) -> list[int]:
    """PIDs whose command line holds ``marker`` (a node's temp dir: its raylet, GCS, agents), and their
    descendants (the node's workers and actors, whose titles Ray rewrites to ``ray::...``)."""
    parent, found = {}, []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent[int(pid)] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if marker in cmd and int(pid) != os.getpid() and alive(int(pid)):
            found.append(int(pid))
    todo = list(found)
    while todo:
        p = todo.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in found and alive(child):
                found.append(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


class LoopbackCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.home = self.root / "home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "HOME": str(self.home), "RAY_AUTH_MODE": "token", "PYTHONUNBUFFERED": "1",
                    **NODE_DEATH}
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            self.env.pop(key, None)
        subprocess.run([RAY, "get-auth-token", "--generate"], env=self.env, check=True, capture_output=True)
        self.token = (self.home / ".ray" / "auth_token").read_text().strip()
        self.nodes: list[Path] = []  # each node's temp dir, in start order (a killed node stays listed)
        self.manager_port: dict[Path, int] = {}  # node -> its raylet's port (which tells nodes apart on one IP)
        self.address = self.dashboard = None

    def client_env(self, **extra) -> dict:
        """What a user's shell on this machine has: the same HOME (so the token is where Ray keeps it), no
        RAY_AUTH_MODE (a plain shell)."""
        env = {k: v for k, v in self.env.items() if k != "RAY_AUTH_MODE"}
        return {**env, **extra}

    def _start(self, cpus: int, head: bool, dashboard: bool = False) -> Path:
        i = len(self.nodes)
        temp = self.root / f"n{i}"  # short: Ray's socket paths must fit in 107 bytes
        temp.mkdir()
        p = free_ports(8)
        self.manager_port[temp] = p[0]
        args = [RAY, "start", "--node-ip-address", "127.0.0.1", f"--num-cpus={cpus}", "--num-gpus=0",
                f"--temp-dir={temp}", f"--node-manager-port={p[0]}", f"--object-manager-port={p[1]}",
                f"--metrics-export-port={p[2]}", f"--dashboard-agent-listen-port={p[3]}",
                f"--dashboard-agent-grpc-port={p[4]}", f"--runtime-env-agent-port={p[5]}",
                f"--min-worker-port={20000 + 1000 * i}", f"--max-worker-port={20999 + 1000 * i}",
                "--object-store-memory=300000000"]
        if head:
            self.address = f"127.0.0.1:{p[6]}"
            args += ["--head", f"--port={p[6]}", f"--ray-client-server-port={free_ports(1)[0]}"]
            if dashboard:
                self.dashboard = f"http://127.0.0.1:{p[7]}"
                args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={p[7]}"]
            else:
                args += ["--include-dashboard=false"]
        else:
            args += [f"--address={self.address}"]
        self.nodes.append(temp)  # before it can fail: stop() then finds what it left running
        run = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=120)
        if run.returncode:
            raise RuntimeError(f"{' '.join(args)} failed:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
        return temp

    def start_head(self, cpus: int = 1, dashboard: bool = False) -> LoopbackCluster:
        self._start(cpus, head=True, dashboard=dashboard)
        return self

    def add_worker(self, cpus: int = 1, timeout: float = 60) -> Path:
        """A new worker node, once the cluster lists it alive (by its own raylet port: a node killed just before
        may still count as alive for a while, so a count of nodes could wait for the wrong one)."""
        node = self._start(cpus, head=False)
        end = time.time() + timeout
        while self.manager_port[node] not in self.alive_nodes():
            if time.time() > end:
                raise TimeoutError(f"the worker node started in {node} never joined")
            time.sleep(1)
        return node

    def alive_nodes(self) -> dict[int, str]:
        """{raylet port: Ray node id} of the nodes alive now."""
        out = subprocess.run([sys.executable, "-c", f"import json, ray; ray.init(address={self.address!r}, "
                              "include_dashboard=False, logging_level='ERROR'); print('NODES', json.dumps("
                              "{n['NodeManagerPort']: n['NodeID'] for n in ray.nodes() if n['Alive']}))"],
                             env=self.env, capture_output=True, text=True, timeout=120)
        import json

        lines = [line[6:] for line in out.stdout.splitlines() if line.startswith("NODES ")]  # Ray may print too
        found = json.loads(lines[-1]) if out.returncode == 0 and lines else {}
        return {int(k): v for k, v in found.items()}

    def node_id(self, node: Path) -> str:
        return self.alive_nodes()[self.manager_port[node]]

    def pids(self, node: Path) -> list[int]:
        return _processes(str(node))

    def commands(self, node: Path) -> list[str]:
        """The command lines (process titles) of a node's processes: Ray names an actor's process after it."""
        out = []
        for pid in self.pids(node):
            try:
                out.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
        return out

    def cpu_seconds(self, node: Path, title: str) -> float:
        """The most CPU time (user + system, seconds) any one of a node's processes whose title holds ``title`` has
        used: how far an actor has got with its work."""
        most = 0.0
        for pid in self.pids(node):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if title in cmd:
                most = max(most, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        return most

    def kill_node(self, node: Path) -> list[int]:
        """SIGKILL every process of one node (its raylet, its workers): the node dies as a machine would."""
        pids = self.pids(node)
        _signal(pids, signal.SIGKILL)
        return pids

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM to every process of the nodes, SIGKILL to those left after ``grace`` seconds (Ray's agents ignore
        SIGTERM while they wait for a GCS that is going: a longer wait only adds to every test module's time)."""
        pids = [pid for node in self.nodes for pid in self.pids(node)]
        _signal(pids, signal.SIGTERM)
        end = time.time() + grace
        while time.time() < end and any(alive(p) for p in pids):
            time.sleep(0.2)
        _signal([p for p in pids if alive(p)], signal.SIGKILL)


@contextmanager
def running(name: str, env: dict, head_cpus: int, worker_cpus: int = 0, dashboard: bool = False):
    """A ``LoopbackCluster`` with ``env`` added to its nodes' environment: a head of ``head_cpus`` and, if
    ``worker_cpus``, one worker node; stopped and its folder removed at the end. Its folder is short (Ray's socket
    paths must fit in 107 bytes): ``$S2D_TEST_RAY_ROOT/NAME<pid>``, /tmp by default."""
    root = Path(os.environ.get("S2D_TEST_RAY_ROOT", "/tmp")) / f"{name}{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    cluster = LoopbackCluster(root)
    cluster.env.update(env)
    try:
        cluster.start_head(cpus=head_cpus, dashboard=dashboard)
        if worker_cpus:
            cluster.add_worker(cpus=worker_cpus)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
