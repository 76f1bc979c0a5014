"""``run_faces``: videos -> one landmark-cache entry per video (the face-only chain; the README's "Architecture"
draws it). Complete entries are reused; the driver's skeleton is ``driver.drive``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from . import cache, storage
from .cluster import resources
from .driver import Done, Video, drive, unit_rows
from .entries import cached_entries, error_meta, write_error, write_units
from .face_actor import FaceWorker
from .plans import plan_actors
from .settings import FacePlan, FaceSettings, plan_faces
from .sources import Source, check_paths, find_videos


@dataclass
class FacesResult:
    cache_dir: Path | str  # a local folder, or a URI (s3://...)
    settings_hash: str
    videos: list[dict] = field(default_factory=list)  # meta rows, in input order
    decoded: int = 0  # videos that went through the decoder in this run
    cached: int = 0  # videos whose complete cache entry was reused (no detector)
    wall_seconds: float = 0.0  # in an annotate run: when the last video's faces were complete (the chain goes on)
    interrupted: bool = False  # Ctrl-C / SIGTERM: the videos not done have no cache entry, and "interrupted" here

    def count(self, status: str) -> int:
        return sum(v["status"] == status for v in self.videos)

    def summary(self) -> str:
        faces = sum(v["n_faces"] for v in self.videos)
        tracks = sum(v["n_tracks"] for v in self.videos)
        seconds = sum(v["duration_s"] or 0.0 for v in self.videos if v["status"] != "error")
        speed = seconds / self.wall_seconds if self.wall_seconds > 0 else float("nan")
        stop = f", {self.count('interrupted')} interrupted" if self.interrupted else ""
        return (f"videos: {self.count('ok')} ok, {self.count('no_faces')} no faces, {self.count('error')} failed{stop} "
                f"({self.cached} from cache); faces: {faces}; tracks: {tracks}; "
                f"{seconds:.1f} s of video in {self.wall_seconds:.1f} s ({speed:.2f} video-s per wall-s)")


def run_faces(paths, cache_dir: str | Path, settings: FaceSettings = FaceSettings(), device: str = "auto",
              address: str | None = None, progress: bool = True) -> FacesResult:
    """Videos (files or folders, or Sources) -> one landmark-cache entry per video. Re-runs reuse complete
    entries."""
    t0 = time.perf_counter()
    cache_dir = storage.location(cache_dir)
    given = bool(paths) and isinstance(paths[0], Source)
    if not given:
        check_paths(paths, cache_dir)
    storage.check_writable(cache_dir)  # a real write, before any work
    plan = plan_faces(settings)  # a missing weights file stops here
    sources = paths if given else find_videos(paths, skip=[cache_dir])
    result = FacesResult(cache_dir, plan.key)
    done = {vid: e[1] for vid, e in cached_entries(cache_dir, plan, [s.video_id for s in sources]).items()}
    result.cached = len(done)
    todo = {s.video_id: s for s in sources if s.video_id not in done}
    if todo:
        entries = Entries(todo, plan, cache_dir)
        metas, result.interrupted = drive(todo, entries, lambda left, dev: chain(left, plan, dev), "faces",
                                          address=address, device=device, progress=progress)
        done.update(metas)
        result.decoded = entries.decoded
    result.videos = [done[s.video_id] for s in sources]
    result.wall_seconds = time.perf_counter() - t0
    return result


def chain(left: dict[str, Source], plan: FacePlan, device: str):
    """The face-only Ray Data chain over the videos ``left``, its pool planned on the nodes alive now."""
    cpus, gpus, nodes = resources()
    faces = plan_actors(cpus, gpus if device == "cuda" else 0, nodes, emotions=False)["faces"]
    # 1. units: the driver probes each video and cuts long ones into time shards
    ds = unit_rows([Video(vid, s.path) for vid, s in left.items()], plan.settings, 2.0, faces.size)
    # 2. face actors: decode -> detect -> 68 landmarks -> track, one unit per actor at a time
    return ds.map_batches(FaceWorker, batch_size=1, **faces.args(tasks_per_actor=1),
                          fn_constructor_kwargs=dict(plan=plan, device=device, threads=faces.threads))


class Entries:
    """3. the driver: each video's units, as they come, joined into its cache entry once all are in."""

    def __init__(self, sources: dict[str, Source], plan: FacePlan, cache_dir: Path | str):
        self.sources, self.plan, self.cache_dir = sources, plan, cache_dir
        self.parts: dict[str, dict] = {}  # video -> {unit index: its faces}
        self.finished: set[str] = set()  # a retried task may send a finished video's units again
        self.decoded = 0

    def connected(self) -> None:
        pass

    def forget(self, video_ids) -> None:
        self.parts.clear()

    def add(self, u) -> Done | None:
        if u.video_id in self.finished:
            return None
        got = self.parts.setdefault(u.video_id, {})
        got[u.index] = u
        if len(got) < u.count:
            return None
        del self.parts[u.video_id]
        self.finished.add(u.video_id)
        src = self.sources[u.video_id]
        try:
            meta, *_ = write_units(self.cache_dir, self.plan, src, [got[i] for i in range(u.count)])
        except storage.NoSpace:  # the run stops (one line): no other video could be written either
            raise
        except Exception as exc:  # this video's entry could not be written: its own error row, the run goes on
            meta = error_meta(src, self.plan.record, f"writing its cache entry: {type(exc).__name__}: {exc}")
        self.decoded += 1
        return Done(u.video_id, meta, storage.name(meta["source_path"]), meta["status"], meta.get("duration_s"))

    def left_over(self, src: Source, status: str, message: str) -> dict:
        if status != "interrupted":
            return write_error(self.cache_dir, self.plan, src, message)
        entry = cache.read_entry(self.cache_dir, self.plan.key, src.video_id)  # one written just before the signal
        self.decoded += entry is not None
        return entry[1] if entry else {**error_meta(src, self.plan.record, message), "status": "interrupted"}
