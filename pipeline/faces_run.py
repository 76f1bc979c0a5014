"""``run_faces``: videos -> the landmark cache, one chain top to bottom; and the face-stage steps that
``run_annotate`` shares (the unit rows, writing a video's cache entry from its units).

    list, probe, cut long videos into time shards [driver] -> [face actors] decode, detect, landmarks, track
         -> [driver] join a video's units (stitch shard tracks), write its cache entry atomically
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


from . import cache, storage
from .cluster import chain_context, init_ray, pick_device, plan_actors, resources, run_passes, stop_on_sigterm
from .face_actor import FaceWorker
from .settings import FacePlan, FaceSettings, plan_faces
from .sources import Source, check_paths, find_videos, release_freed_memory
from .units import empty_faces, join_units, plan_units


PROBE_THREADS = 8  # videos probed at once by the driver (the time goes to file reads and FFmpeg)


@dataclass
class Video:
    """A chain's input row: one video to do (``cached``: its complete cache rows, when it has an entry)."""

    video_id: str
    path: str
    cached: object = None


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


class Progress:
    """The run's progress bar: videos done of the total, elapsed time, the last video's status, and the video-
    seconds done so far with their rate. No time-left estimate: videos differ in length and long ones are cut into
    shards that finish out of order, so a count-based estimate would mislead."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, disable=not enabled,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} videos [{elapsed}{postfix}]")
        self.t0, self.video_s = time.perf_counter(), 0.0

    def done(self, name: str, status: str, duration_s: float | None) -> None:
        self.video_s += duration_s or 0.0
        rate = self.video_s / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix_str(f"{name}: {status}; {self.video_s:.0f} video-s done, {rate:.2f} video-s/s")
        self.bar.update()

    def note(self, line: str) -> None:
        """One line on stderr, above the bar (shown with the bar off too)."""
        import sys

        self.bar.write(line, file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()


def unit_rows(videos: list[Video], s: FaceSettings, segment_s: float, face_actors: int):
    """The chains' input: one row {"video_id", "item": Unit} per unit, each in a block of its own, in the order the
    videos were given. The driver probes the videos and cuts long ones into time shards before the chain starts
    (a header and a first frame read per video, ``PROBE_THREADS`` at a time; the driver lists and checks the same
    files already). Not a Ray task: that boots one more worker process while the face actors start, and on 2 CPUs
    the first face came ~1 s later (``bench/annotate_speed.py``: first face found)."""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    def plan(v: Video) -> list:
        return plan_units(v.video_id, v.path, s.fps, s.shard_s, segment_s, v.cached, face_actors)

    with ThreadPoolExecutor(max_workers=min(PROBE_THREADS, len(videos)) or 1) as pool:
        units = [u for planned in pool.map(plan, videos) for u in planned]
    release_freed_memory()
    return ray.data.from_items([{"video_id": u.video_id, "item": u} for u in units],
                               override_num_blocks=max(1, len(units)))


def write_units(cache_dir: Path, plan: FacePlan, src: Source, units: list) -> tuple[dict, list[dict]]:
    """A decoded video's units -> its cache entry (written atomically) -> (its meta row, per unit the
    {unit track: video track} map and the frame-index offset)."""
    info = next((u.info for u in units if u.info), None) or {}
    error = next((u.error for u in units if u.status == "error"), None)
    faces, maps, counts = empty_faces(), [{} for _ in units], {}
    if error is None:
        try:
            faces, maps, counts = join_units(units)
        except ValueError as exc:
            error = f"shards: {exc}"
    if error is not None:
        faces, maps = {**empty_faces(), "width": 0, "height": 0}, [{} for _ in units]
    faces.pop("own", None)
    n = len(faces["frame_index"])
    status = "error" if error else "ok" if n else "no_faces"
    meta = {"video_id": src.video_id, "source_path": src.path, "duration_s": info.get("duration_s"),
            "native_fps": info.get("native_fps"), "rotation": info.get("rotation", 0), "width": info.get("width"),
            "height": info.get("height"), "settings": plan.record, "status": status, "error": error,
            "frame_count": counts.get("frame_count", 0), "sampled_frames": counts.get("sampled_frames", 0),
            "decode_seconds": sum(u.decode_seconds for u in units), "total_seconds": sum(u.seconds for u in units)}
    cache.write_entry(cache_dir, plan.key, src.video_id, {**faces, "video_id": src.video_id}, meta)
    offsets = counts.get("offsets", [0] * len(units))
    return cache.read_meta(cache_dir, plan.key, src.video_id), list(zip(maps, offsets))


def error_meta(src: Source, settings: dict, message: str) -> dict:
    return {"video_id": src.video_id, "source_path": src.path, "duration_s": None, "native_fps": None,
            "frame_count": 0, "sampled_frames": 0, "rotation": 0, "width": None, "height": None,
            "settings": settings, "status": "error", "error": message, "decode_seconds": None, "total_seconds": 0.0,
            "n_faces": 0, "n_tracks": 0}


def run_faces(paths, cache_dir: str | Path, settings: FaceSettings = FaceSettings(), device: str = "auto",
              address: str | None = None, progress: bool = True) -> FacesResult:
    """Videos (files or folders, or Sources) -> one landmark-cache entry per video. Re-runs reuse complete
    entries."""
    t0 = time.perf_counter()
    cache_dir = storage.location(cache_dir)
    if not (paths and isinstance(paths[0], Source)):
        check_paths(paths, cache_dir)
    plan = plan_faces(settings)  # a missing weights file stops here
    sources = paths if paths and isinstance(paths[0], Source) else find_videos(paths)
    result = FacesResult(cache_dir, plan.key)
    done: dict[str, dict] = {}
    for s in sources:  # the cache: complete entries are reused, nothing is decoded for them
        entry = cache.read_entry(cache_dir, plan.key, s.video_id)
        if entry is not None:
            done[s.video_id] = entry[1]
    result.cached = len(done)
    todo = {s.video_id: s for s in sources if s.video_id not in done}

    if todo:
        init_ray(address)
        chain_context()
        device = pick_device(device)
        stop_on_sigterm()
        parts: dict[str, dict] = {}  # video -> {unit index: its faces}, as they come

        def run() -> object:  # one pass: the chain over what is not done
            parts.clear()
            left = [Video(vid, s.path) for vid, s in todo.items() if vid not in done]
            cpus, gpus, nodes = resources()
            pools = plan_actors(cpus, gpus if device == "cuda" else 0, nodes, emotions=False)
            # 1. units: the driver probes each video and cuts long ones into time shards
            ds = unit_rows(left, settings, 2.0, pools["faces"].size)
            # 2. face actors: decode -> detect -> 68 landmarks -> track, one unit per actor at a time
            return ds.map_batches(FaceWorker, batch_size=1, **pools["faces"].args(tasks_per_actor=1),
                                  fn_constructor_kwargs=dict(plan=plan, device=device,
                                                             threads=pools["faces"].threads))

        def take(u) -> None:  # 3. the driver: a video's units joined into its cache entry
            got = parts.setdefault(u.video_id, {})
            got[u.index] = u
            if len(got) < u.count or u.video_id in done:
                return
            meta, _ = write_units(cache_dir, plan, todo[u.video_id], [got[i] for i in range(u.count)])
            done[u.video_id] = meta
            result.decoded += 1
            bar.done(storage.name(meta["source_path"]), meta["status"], meta.get("duration_s"))

        with Progress(len(todo), "faces", progress) as bar:
            ended = run_passes(run, take, lambda why: bar.note(
                f"{why}: {sum(v not in done for v in todo)} videos again, on the nodes left"))
        status, message = ended or ("error", "pipeline: the video never completed; run again")
        result.interrupted = status == "interrupted"
        for vid, s in todo.items():
            if vid in done:
                continue
            if result.interrupted:  # no cache entry (a re-run does it), or one written just before the signal
                entry = cache.read_entry(cache_dir, plan.key, vid)
                done[vid] = entry[1] if entry else {**error_meta(s, plan.record, message), "status": "interrupted"}
                result.decoded += entry is not None
            else:
                cache.write_entry(cache_dir, plan.key, vid, {**empty_faces(), "video_id": vid, "width": 0,
                                                             "height": 0}, error_meta(s, plan.record, message))
                done[vid] = cache.read_meta(cache_dir, plan.key, vid)
    result.videos = [done[s.video_id] for s in sources]
    result.wall_seconds = time.perf_counter() - t0
    return result
