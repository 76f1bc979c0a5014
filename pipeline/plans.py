"""How many actors and workers a run gets on the cluster it has: the face and S2D actor pools of the chains
(``plan_actors``), and the CPUs each training or evaluation worker and data task reserves (``plan_workers``)."""
from __future__ import annotations

import math
from dataclasses import dataclass


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
