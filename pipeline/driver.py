"""The skeleton both drivers share (``run_faces``, ``run_annotate``): connect, run the chain over the videos not
done yet in passes (again on the nodes left when one dies), give each item the chain yields to the run's
collector, show progress, and give every video the chain did not finish a record. The chain itself is drawn once,
in the README's "Architecture"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from collections.abc import Callable

from .cluster import chain_context, init_ray, pick_device
from .passes import run_passes, stop_on_sigterm
from .progress import Progress
from .settings import FaceSettings
from .sources import Source, release_freed_memory
from .units import plan_units

PROBE_THREADS = 8  # videos probed at once by the driver (the time goes to file reads and FFmpeg)
NEVER_DONE = ("error", "pipeline: the video never completed; run again")


@dataclass
class Video:
    """A chain's input: one video to do (``cached``: its complete landmark-cache rows, when it has an entry)."""

    video_id: str
    path: str
    cached: object = None


@dataclass(frozen=True)
class Done:
    """A video the collector has finished: its record, and what the progress bar shows of it."""

    video_id: str
    record: object
    name: str
    status: str
    duration_s: float | None


class Collector(Protocol):
    """A run's part in the driver: what it makes of the chain's items."""

    def connected(self) -> None:
        """Ray is up (the run's clock for the first face starts)."""

    def forget(self, video_ids) -> None:
        """Drop what came of these videos so far (a pass broke off): they are done again from the start."""

    def add(self, item) -> Done | None:
        """One item from the chain; a ``Done`` once it completes its video."""

    def left_over(self, src: Source, status: str, message: str) -> object:
        """The record of a video the chain did not finish: ``status`` "interrupted" (Ctrl-C, SIGTERM) or
        "error"."""


def drive(todo: dict[str, Source], collector: Collector, chain: Callable, desc: str, *, address: str | None,
          device: str, progress: bool) -> tuple[dict[str, object], bool]:
    """Run ``chain(videos_left, device)`` (a Ray Data dataset of rows {"item"}) until every video of ``todo`` is
    done, in passes (``run_passes``) -> ({video id: record}, interrupted)."""
    init_ray(address)
    collector.connected()
    chain_context()
    device = pick_device(device)
    stop_on_sigterm()
    done: dict[str, object] = {}

    def run():  # one pass: the chain over what is not done
        left = {vid: s for vid, s in todo.items() if vid not in done}
        collector.forget(left)  # what a broken pass left half-way is done again
        return chain(left, device)

    def take(item) -> None:
        if (d := collector.add(item)) is not None:
            done[d.video_id] = d.record
            bar.done(d.name, d.status, d.duration_s)

    with Progress(len(todo), desc, progress) as bar:
        ended = run_passes(run, take, lambda why: bar.note(
            f"{why}: {sum(v not in done for v in todo)} videos again, on the nodes left"))
    status, message = ended or NEVER_DONE
    for vid, s in todo.items():
        if vid not in done:
            done[vid] = collector.left_over(s, status, message)
    return done, status == "interrupted"


def unit_rows(videos: list[Video], s: FaceSettings, segment_s: float, face_actors: int):
    """The chains' input: one row {"video_id", "item": Unit} per unit, each in a block of its own, in the order the
    videos were given. The driver probes the videos and cuts long ones into time shards before the chain starts
    (a header and a first frame read per video, ``PROBE_THREADS`` at a time). Not a Ray task: that would boot one
    more worker process while the face actors start, and delay the first face."""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    def plan(v: Video) -> list:
        return plan_units(v.video_id, v.path, s.fps, s.shard_s, segment_s, v.cached, face_actors)

    with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(videos)) or 1) as pool:
        units = [u for planned in pool.map(plan, videos) for u in planned]
    release_freed_memory()
    return ray.data.from_items([{"video_id": u.video_id, "item": u} for u in units],
                               override_num_blocks=max(1, len(units)))
