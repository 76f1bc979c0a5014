"""The Ray Data chains, each readable top to bottom (``run_faces``, ``run_annotate``).

faces:    list -> decode (chunks of sampled frames) -> detect -> landmarks -> track + cache entry -> [driver]
annotate: the same face stages -> plan segments -> cut aligned clips -> S2D -> [driver] timeline files

Every stage is a Ray Data actor pool over rows {video_id, kind, payload}; the kinds are listed at the stages. A
video's frames travel in bounded chunks, followed by one ``end`` row; the tracking actor (one, on the driver's
node) collects a video's face rows, and when all of them are in it links them into tracks, writes the video's
cache entry atomically and emits one ``video`` row, which the annotate chain turns into segments, clips and
probabilities while the face stages go on with the next videos. Memory held per video is its face rows only.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import cache
from .decode import DecodeError, get_decoder
from .sources import Source, list_videos, probe


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class FaceSettings:
    fps: float = 8.0  # analysis rate: frames sampled per second of video, by presentation timestamp
    detector: str = "retinaface-mobilenet"  # or "retinaface-resnet50"
    detector_weights: str | None = None  # path or weights name; default: the detector's registry entry
    landmarks: str = "mobilefacenet"  # or "fan"
    landmark_weights: str | None = None  # path or weights name; default: the backend's usual file
    score_threshold: float = 0.6
    nms_threshold: float = 0.4
    long_side: int = 640  # frames are resized so their long side is this, for detection
    decoder: str = "pyav"  # or "decord"
    max_gap_s: float = 1.0  # a track survives this long without its face
    chunk_size: int = 16  # frames per chunk (bounds memory per task); not part of the cache key


DETECTORS = {"retinaface-mobilenet": "mobilenet0.25", "retinaface-resnet50": "resnet50"}


def resolve_face_weights(s: FaceSettings) -> tuple[Path, Path | None]:
    """(detector weights, landmark weights) on disk, or a WeightsNotFound naming the file, before any work."""
    from s2d_model.weights import resolve

    if s.detector not in DETECTORS:
        raise ValueError(f"unknown detector '{s.detector}': choose one of {', '.join(DETECTORS)}")
    det = resolve(s.detector_weights or s.detector)
    if s.landmarks == "mobilefacenet":
        lm = resolve(s.landmark_weights or "mobilefacenet")
    elif s.landmarks == "fan":
        from .landmarks import fan_default_path

        lm = Path(s.landmark_weights) if s.landmark_weights else fan_default_path()
        if not lm.is_file():  # FANLandmarks says the same with the upstream URL; fail before any work
            from .landmarks import FANLandmarks

            FANLandmarks(lm)
    else:
        raise ValueError(f"unknown landmark backend '{s.landmarks}': use mobilefacenet or fan")
    return det, lm


def find_videos(paths) -> list[Source]:
    sources = list_videos(paths)
    if not sources:
        raise FileNotFoundError(f"no videos found in {', '.join(map(str, paths))}")
    return sources


def prepare_faces(s: FaceSettings) -> tuple[Path, Path | None, dict, str]:
    """(detector file, landmark file, settings record, cache key): everything decided before any work."""
    det, lm = resolve_face_weights(s)
    record = settings_record(s, det, lm)
    return det, lm, record, cache.settings_hash(record)


def settings_record(s: FaceSettings, det: Path, lm: Path | None) -> dict:
    """Everything that changes the face rows: the cache key is a hash of this."""
    rec = {k: v for k, v in asdict(s).items() if k not in ("chunk_size", "detector_weights", "landmark_weights")}
    rec["detector_file"] = cache.file_fingerprint(det)
    rec["landmark_file"] = cache.file_fingerprint(lm) if lm else None
    return rec


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import ray

    return "cuda" if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (a running cluster), or start a local one; reuse an existing connection."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True) if address else \
            ray.init(include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # we draw one bar over videos instead
    ctx.verbose_progress = False
    ctx.enable_fallback_to_arrow_object_ext_type = True  # payload columns are pickled objects by design: no warning


# ------------------------------------------------------------------------------------------ resources
@dataclass(frozen=True)
class Pool:
    """One stage's actor pool: how many actors, and what each one reserves."""

    size: int
    num_cpus: float
    num_gpus: float = 0.0

    def args(self) -> dict:
        """The map_batches keywords."""
        from ray.data import ActorPoolStrategy

        return dict(compute=ActorPoolStrategy(size=self.size), num_cpus=self.num_cpus, num_gpus=self.num_gpus)


def plan_pools(cpus: float, gpus: float, emotions: bool) -> dict[str, Pool]:
    """Every stage's actor pool, sized so that all of them fit on the cluster at once.

    The stages run at the same time (the chain streams), and an actor that cannot be placed would stall the stages
    before it, so the reservations must add up to at most the cluster. One set of face actors (decode, detect,
    landmarks; plus the clip cutter with ``emotions``) per 4 CPUs, per 8 when S2D shares the cluster; S2D one actor
    per 4 CPUs, or one per GPU. Below 4 CPUs every reservation is scaled by cpus / 4 (2 CPUs: 1.75 reserved in all).
    GPUs: S2D gets a whole GPU per actor when there are two or more (the face actors share the last one), half of
    the only GPU otherwise. Tracking and segment planning are light and reserve nothing.
    """
    u = min(1.0, cpus / 4)
    g = int(gpus)
    n = max(1, int(cpus // (8 if emotions else 4)))
    face_gpu = 0.0
    if g:
        n = min(n, (2 if g > 1 else 1) if emotions else g)
        face_gpu = 0.375 if emotions else 0.75  # per set: detect 2/3 of it, landmarks 1/3
    pools = {"decode": Pool(n, 0.5 * u), "detect": Pool(n, u, face_gpu * 2 / 3),
             "landmarks": Pool(n, 0.5 * u, face_gpu / 3), "track": Pool(1, 0.0)}
    if emotions:
        s2d_cpu = 0.5 * u if g else u
        s2d_gpu = 0.0 if not g else (1.0 if g > 1 else 0.5)
        m = (g - 1 if g > 1 else 1) if g else max(1, int(cpus // 4))
        left = cpus - 2.5 * u * n  # after the face actors and the clip cutters
        pools.update(plan=Pool(1, 0.0), cut=Pool(n, 0.5 * u),
                     s2d=Pool(max(1, min(m, int(left // s2d_cpu))), s2d_cpu, s2d_gpu))
    return pools


def on_this_node() -> dict:
    """map_batches keywords that pin an actor to the driver's node (it writes the driver's local cache folder)."""
    import ray

    return dict(label_selector={"ray.io/node-id": ray.get_runtime_context().get_node_id()})


# ------------------------------------------------------------------------------------------ stages
# Every stage maps rows {video_id, kind, payload} (payload: a dict) and passes on the kinds it does not handle.
# Kinds: cached (the video's face cache entry is complete), chunk and end (decoded frames, then the video's end),
# video (one per video: face meta, then its segments), block (segments to cut together), clip (one segment).
class Payload(MutableMapping):
    """A row's payload: a dict that Ray Data stores pickled, exactly as it is. (A plain dict it would try to turn
    into an Arrow struct first, and then give back its lists as numpy arrays.)"""

    def __init__(self, d: dict | None = None):
        self.d = dict(d or {})

    def __getitem__(self, k):
        return self.d[k]

    def __setitem__(self, k, v):
        self.d[k] = v

    def __delitem__(self, k):
        del self.d[k]

    def __iter__(self):
        return iter(self.d)

    def __len__(self):
        return len(self.d)


def _rows(video_ids: list[str], kinds: list[str], payloads: list[dict]) -> dict:
    column = np.empty(len(payloads), dtype=object)
    for i, p in enumerate(payloads):  # one by one: numpy would take a mapping for a sequence
        column[i] = p if isinstance(p, Payload) else Payload(p)
    return {"video_id": np.array(video_ids), "kind": np.array(kinds), "payload": column}


def _error_text(stage: str, exc: BaseException) -> str:
    if isinstance(exc, DecodeError):
        return str(exc)
    return f"{stage}: {type(exc).__name__}: {exc}"


class DecodeChunks:
    """A video -> its sampled frames in chunks of at most ``chunk_size``, then one ``end`` row (or one ``cached``
    row, decoding nothing, when the input row says its face cache entry is complete)."""

    def __init__(self, decoder: str, fps: float, chunk_size: int):
        self.decoder = get_decoder(decoder)
        self.fps, self.chunk_size = fps, chunk_size

    def __call__(self, batch: dict):
        for vid, path, cached in zip(batch["video_id"], batch["path"], batch["cached"]):
            if cached:
                yield _rows([str(vid)], ["cached"], [{}])
            else:
                yield from self.one(str(vid), str(path))

    def one(self, vid: str, path: str):
        start = time.perf_counter()
        end = {"status": "ok", "error": None, "n_chunks": 0, "sampled_frames": 0, "frame_count": 0, "info": None}
        try:
            end["info"] = asdict(probe(path))
            chunks = self.decoder.iter_chunks(path, self.fps, self.chunk_size)
            while True:
                try:
                    chunk = next(chunks)
                except StopIteration as stop:
                    end["frame_count"] = int(stop.value or 0)
                    break
                chunk["chunk"] = end["n_chunks"]
                end["n_chunks"] += 1
                end["sampled_frames"] += len(chunk["frame_index"])
                yield _rows([vid], ["chunk"], [chunk])
        except Exception as exc:  # a bad file fails its own video, never the run
            end["status"], end["error"] = "error", _error_text("decode", exc)
        end["decode_seconds"] = time.perf_counter() - start
        yield _rows([vid], ["end"], [end])


class DetectFaces:
    """Chunk frames -> RetinaFace detections per frame (``dets``)."""

    def __init__(self, weights: str, network: str, device: str, score_threshold: float, nms_threshold: float,
                 long_side: int):
        from .retinaface import FaceDetector

        self.detector = FaceDetector(weights, network, device=device, score_threshold=score_threshold,
                                     nms_threshold=nms_threshold, long_side=long_side)

    def __call__(self, batch: dict) -> dict:
        for payload, kind in zip(batch["payload"], batch["kind"]):
            if kind == "chunk" and "error" not in payload:
                try:
                    payload["dets"] = self.detector(payload["frames"])
                except Exception as exc:
                    payload["error"] = _error_text("detect", exc)
        return batch


class FindLandmarks:
    """Chunk frames + detections -> one row per face with 68 landmarks; the frames are dropped here."""

    def __init__(self, backend: str, weights: str | None, device: str):
        from .landmarks import get_landmarker

        self.landmarker = get_landmarker(backend, weights, device)

    def __call__(self, batch: dict) -> dict:
        for payload, kind in zip(batch["payload"], batch["kind"]):
            if kind != "chunk":
                continue
            frames = payload.pop("frames")
            dets = payload.pop("dets", None)
            if "error" in payload:
                continue
            try:
                payload["faces"] = self.faces(payload, frames, dets)
            except Exception as exc:
                payload["error"] = _error_text("landmarks", exc)
        return batch

    def faces(self, chunk: dict, frames: np.ndarray, dets: list[dict]) -> dict:
        marks = self.landmarker(frames, [d["bbox"] for d in dets])  # per frame [k, 68, 2]
        counts = [len(d["score"]) for d in dets]
        n = int(sum(counts))
        h, w = frames.shape[1:3]
        return {
            "frame_index": np.repeat(chunk["frame_index"], counts).astype(np.int64),
            "time_s": np.repeat(chunk["time_s"], counts).astype(np.float64),
            "face": np.concatenate([np.arange(c, dtype=np.int16) for c in counts]) if n else np.zeros(0, np.int16),
            "score": np.concatenate([d["score"] for d in dets]).astype(np.float32) if n else np.zeros(0, np.float32),
            "bbox": np.concatenate([d["bbox"] for d in dets]).reshape(n, 4).astype(np.float32),
            "kps5": np.concatenate([d["kps5"] for d in dets]).reshape(n, 10).astype(np.float32),
            "landmarks68": np.concatenate(marks).reshape(n, 136).astype(np.float32) if n else
            np.zeros((0, 136), np.float32),
            "width": w, "height": h,
        }


# ------------------------------------------------------------------------------------------ tracking
@dataclass
class FacesResult:
    cache_dir: Path
    settings_hash: str
    videos: list[dict] = field(default_factory=list)  # meta rows, in input order
    decoded: int = 0  # videos that went through the decoder in this run
    cached: int = 0  # videos whose complete cache entry was reused (no decoder, no detector)
    wall_seconds: float = 0.0  # in an annotate run: when the tracking actor emitted the last video (the chain goes on)

    def count(self, status: str) -> int:
        return sum(v["status"] == status for v in self.videos)

    def summary(self) -> str:
        faces = sum(v["n_faces"] for v in self.videos)
        tracks = sum(v["n_tracks"] for v in self.videos)
        seconds = sum(v["duration_s"] or 0.0 for v in self.videos if v["status"] != "error")
        speed = seconds / self.wall_seconds if self.wall_seconds > 0 else float("nan")
        return (f"videos: {self.count('ok')} ok, {self.count('no_faces')} no faces, {self.count('error')} failed "
                f"({self.cached} from cache); faces: {faces}; tracks: {tracks}; "
                f"{seconds:.1f} s of video in {self.wall_seconds:.1f} s ({speed:.2f} video-s per wall-s)")


class VideoAssembler:
    """Collects one video's chunks from the stream; when all are in, tracks its faces and writes its entry."""

    def __init__(self, cache_dir: Path, settings_hash: str, settings: dict, sources: dict[str, Source],
                 max_gap_s: float):
        self.cache_dir, self.settings_hash, self.settings = cache_dir, settings_hash, settings
        self.sources, self.max_gap_s = sources, max_gap_s
        self.parts: dict[str, list[dict]] = {}
        self.ends: dict[str, dict] = {}
        self.started = time.perf_counter()

    def add(self, vid: str, kind: str, payload: dict) -> tuple[dict, pa.Table] | None:
        """Feed one row; returns the video's (meta, faces table) when the video is complete and written."""
        if kind == "end":
            self.ends[vid] = payload
        else:
            self.parts.setdefault(vid, []).append(payload)
        end = self.ends.get(vid)
        if end is None or len(self.parts.get(vid, [])) < end["n_chunks"]:
            return None
        return self.finish(vid, self.parts.pop(vid, []), self.ends.pop(vid))

    def finish(self, vid: str, parts: list[dict], end: dict) -> tuple[dict, pa.Table]:
        errors = [p["error"] for p in parts if "error" in p]
        status, error = end["status"], end["error"]
        if errors and status != "error":
            status, error = "error", errors[0]
        chunks = sorted((p for p in parts if "faces" in p), key=lambda p: p["chunk"])
        faces = cache.faces_table(self.faces(vid, chunks))
        if status == "ok" and faces.num_rows == 0:
            status = "no_faces"
        info = end.get("info") or {}
        meta = {
            "video_id": vid, "source_path": self.sources[vid].path, "duration_s": info.get("duration_s"),
            "native_fps": info.get("native_fps"), "frame_count": end["frame_count"],
            "sampled_frames": end["sampled_frames"], "rotation": info.get("rotation", 0),
            "width": info.get("width"), "height": info.get("height"), "settings": self.settings,
            "status": status, "error": error, "decode_seconds": end.get("decode_seconds"),
            "total_seconds": time.perf_counter() - self.started,
        }
        cache.write_entry(self.cache_dir, self.settings_hash, vid, faces, meta)
        return cache.read_meta(self.cache_dir, self.settings_hash, vid), faces

    def faces(self, vid: str, parts: list[dict]) -> dict:
        """Concatenate the chunks' face rows in stream order and give each a track id."""
        keys = ("frame_index", "time_s", "face", "score", "bbox", "kps5", "landmarks68")
        if parts:
            cols = {k: np.concatenate([p["faces"][k] for p in parts]) for k in keys}
            width, height = parts[0]["faces"]["width"], parts[0]["faces"]["height"]
        else:
            cols = {"frame_index": np.zeros(0, np.int64), "time_s": np.zeros(0), "face": np.zeros(0, np.int16),
                    "score": np.zeros(0, np.float32), "bbox": np.zeros((0, 4), np.float32),
                    "kps5": np.zeros((0, 10), np.float32), "landmarks68": np.zeros((0, 136), np.float32)}
            width = height = 0
        from .track import assign_tracks

        cols["track_id"] = assign_tracks(cols["frame_index"], cols["time_s"], cols["bbox"],
                                         cols["landmarks68"].reshape(-1, 68, 2), max_gap_s=self.max_gap_s)
        return {**cols, "video_id": vid, "width": width, "height": height}


class TrackVideos:
    """``chunk``/``end`` rows -> one ``video`` row per video once all of its rows are in: its faces linked into
    tracks and its cache entry written (atomically); ``cached`` rows -> the ``video`` row of the complete entry.

    Payload of a video row: ``meta`` (the cache entry's), ``faces`` (pa.Table; None when the video failed),
    ``decoded`` (False: from the cache) and ``tracked_at`` (``time.time()``: this node's clock, as the driver's).
    Stateful (it holds each unfinished video's face rows), so it runs as ONE actor, on the driver's node: the cache
    is a folder there.
    """

    def __init__(self, cache_dir: str, settings_hash: str, settings: dict, sources: dict[str, Source],
                 max_gap_s: float):
        self.cache_dir, self.settings_hash, self.settings = Path(cache_dir), settings_hash, settings
        self.sources = sources
        self.assembler = VideoAssembler(self.cache_dir, settings_hash, settings, sources, max_gap_s)

    def __call__(self, batch: dict):
        for vid, kind, payload in zip(batch["video_id"], batch["kind"], batch["payload"]):
            vid, kind = str(vid), str(kind)
            if kind == "cached":
                entry = cache.read_entry(self.cache_dir, self.settings_hash, vid)
                table, meta = entry if entry else (None, _error_meta(
                    self.sources[vid], self.settings, "cache: the entry was removed during the run; run again"))
                yield _rows([vid], ["video"], [{"meta": meta, "faces": table, "decoded": False,
                                                 "tracked_at": time.time()}])
                continue
            done = self.assembler.add(vid, kind, payload)
            if done is not None:
                meta, table = done
                yield _rows([vid], ["video"], [{"meta": meta, "faces": None if meta["status"] == "error" else table,
                                                 "decoded": True, "tracked_at": time.time()}])


def _error_meta(src: Source, settings: dict, message: str) -> dict:
    return {"video_id": src.video_id, "source_path": src.path, "duration_s": None, "native_fps": None,
            "frame_count": 0, "sampled_frames": 0, "rotation": 0, "width": None, "height": None,
            "settings": settings, "status": "error", "error": message, "decode_seconds": None, "total_seconds": 0.0,
            "n_faces": 0, "n_tracks": 0}


def face_stages(ds, s: FaceSettings, det_path: Path, lm_path: Path | None, device: str, pools: dict[str, Pool],
                cache_dir: Path, key: str, record: dict, sources: list[Source], detect: bool = True):
    """Input rows {video_id, path, cached} -> one ``video`` row per video (see TrackVideos). ``detect=False``
    (every video cached) leaves out the detector and landmark actors: nothing would reach them."""
    # decode: sampled frames in bounded chunks, plus one end row per video
    ds = ds.map_batches(DecodeChunks, batch_size=1, **pools["decode"].args(),
                        fn_constructor_kwargs=dict(decoder=s.decoder, fps=s.fps, chunk_size=s.chunk_size))
    if detect:
        # detect faces in every sampled frame
        ds = ds.map_batches(DetectFaces, batch_size=1, **pools["detect"].args(),
                            fn_constructor_kwargs=dict(weights=str(det_path), network=DETECTORS[s.detector],
                                                       device=device, score_threshold=s.score_threshold,
                                                       nms_threshold=s.nms_threshold, long_side=s.long_side))
        # 68 landmarks per face; frames are dropped after this stage
        ds = ds.map_batches(FindLandmarks, batch_size=1, **pools["landmarks"].args(),
                            fn_constructor_kwargs=dict(backend=s.landmarks, weights=str(lm_path) if lm_path else None,
                                                       device=device))
    # link each complete video's faces into tracks, write its cache entry
    return ds.map_batches(TrackVideos, batch_size=1, **pools["track"].args(), **on_this_node(),
                          fn_constructor_kwargs=dict(cache_dir=str(cache_dir), settings_hash=key, settings=record,
                                                     sources={x.video_id: x for x in sources},
                                                     max_gap_s=s.max_gap_s))


def _inputs(sources: list[Source], cached: set[str]):
    """The chain's input: one row per video, one block each (so videos spread over the decoders)."""
    import ray

    return ray.data.from_items([{"video_id": x.video_id, "path": x.path, "cached": x.video_id in cached}
                                for x in sources], override_num_blocks=len(sources))


def _cluster() -> tuple[float, float]:
    import ray

    res = ray.cluster_resources()
    return max(1.0, res.get("CPU", 1.0)), res.get("GPU", 0.0)


# ------------------------------------------------------------------------------------------ the faces chain
#
# faces: list -> DecodeChunks -> DetectFaces -> FindLandmarks -> TrackVideos -> [driver] counts and the bar
def run_faces(paths, cache_dir: str | Path, settings: FaceSettings = FaceSettings(), device: str = "auto",
              address: str | None = None, progress: bool = True) -> FacesResult:
    """Videos (files or folders) -> one landmark-cache entry per video. Re-runs reuse complete entries."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    det_path, lm_path, record, key = prepare_faces(settings)  # a missing weights file stops here
    cache_dir = Path(cache_dir)
    sources = paths if paths and isinstance(paths[0], Source) else find_videos(paths)
    result = FacesResult(cache_dir, key)
    done: dict[str, dict] = {}
    for s in sources:  # the cache: complete entries are reused, nothing is decoded for them
        entry = cache.read_entry(cache_dir, key, s.video_id)
        if entry is not None:
            done[s.video_id] = entry[1]
    result.cached = len(done)
    todo = [s for s in sources if s.video_id not in done]

    if todo:
        init_ray(address)
        device = pick_device(device)
        cpus, gpus = _cluster()
        pools = plan_pools(cpus, gpus if device == "cuda" else 0, emotions=False)
        ds = face_stages(_inputs(todo, set()), settings, det_path, lm_path, device, pools, cache_dir, key, record,
                         todo)
        with tqdm(total=len(todo), unit="video", desc="faces", disable=not progress) as bar:
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    for payload in batch["payload"]:
                        meta = payload["meta"]
                        done[meta["video_id"]] = meta
                        result.decoded += 1
                        bar.set_postfix_str(f"{Path(meta['source_path']).name}: {meta['status']}")
                        bar.update()
                message = "pipeline: the video never completed (the tracking actor was restarted?); run again"
            except Exception as exc:  # the chain itself broke: record what is left as failed, keep what is done
                message = f"pipeline: {type(exc).__name__}: {exc}"
                traceback.print_exc()
            for s in todo:
                if s.video_id not in done:
                    cache.write_entry(cache_dir, key, s.video_id, _empty_faces(s.video_id),
                                      _error_meta(s, record, message))
                    done[s.video_id] = cache.read_meta(cache_dir, key, s.video_id)
    result.videos = [done[s.video_id] for s in sources]
    result.wall_seconds = time.perf_counter() - t0
    return result


def _empty_faces(vid: str) -> dict:
    return {"video_id": vid, "frame_index": np.zeros(0, np.int64), "time_s": np.zeros(0), "face": np.zeros(0, np.int16),
            "track_id": np.zeros(0, np.int32), "score": np.zeros(0, np.float32), "bbox": np.zeros((0, 4)),
            "kps5": np.zeros((0, 10)), "landmarks68": np.zeros((0, 136)), "width": 0, "height": 0}


def meta_json(meta: dict) -> str:
    return json.dumps(meta, default=str, sort_keys=True)


# ------------------------------------------------------------------------------------------ the annotate chain
#
# annotate: list -> [the face stages: DecodeChunks (or the cache) -> DetectFaces -> FindLandmarks -> TrackVideos]
#           -> PlanSegments -> CutClips -> ClassifyClips -> [driver] one timeline Parquet per video + a manifest
# One streaming chain: a video's clips are cut and classified as soon as its faces are tracked, while the face
# stages work on the next videos.
@dataclass(frozen=True)
class AnnotateSettings:
    weights: str = "s2d-dfew"  # weights name, path, or "random-tiny" (untrained, for smoke tests)
    labels: str | None = None  # label set; default: what the weights were trained on
    s2d_landmark_weights: str | None = None  # S2D's landmark branch (MobileFaceNet); default: "mobilefacenet"
    segment_s: float = 2.0
    stride_s: float = 1.0
    min_face_frames: int = 8
    views: int = 1  # 2: test-time views, a window's first and last 16 sampled frames, averaged (when it has more)
    batch_size: int = 8  # clips per S2D forward
    windows_per_block: int = 8  # windows re-decoded together (bounds memory per task)

    def __post_init__(self):  # fail before any work, not once per video in the planner
        if self.views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, not {self.views}")


@dataclass
class AnnotateResult:
    out_dir: Path
    settings_hash: str
    videos: list[dict] = field(default_factory=list)  # per video: status, error, n_tracks, n_segments, timeline
    skipped: int = 0  # videos whose complete timeline was kept
    clips: int = 0  # clips classified in this run
    wall_seconds: float = 0.0
    s2d_seconds: float = 0.0  # time the S2D actors spent in the model (normalise + forward), summed over clips
    first_timeline_seconds: float | None = None  # when the first timeline file of this run was written
    faces: FacesResult | None = None  # the face stage's part (its wall_seconds: when the last video was tracked)
    warning: str | None = None

    def count(self, status: str) -> int:
        return sum(v["status"] == status for v in self.videos)

    def summary(self) -> str:
        return (f"videos: {self.count('ok')} ok, {self.count('no_faces')} no faces, {self.count('error')} failed "
                f"({self.skipped} already done); segments: {sum(v['n_segments'] for v in self.videos)}; "
                f"clips classified: {self.clips} in {self.wall_seconds:.1f} s")


class PlanSegments:
    """``video`` rows -> the same row with ``segments`` (all of the video's, for its timeline) instead of its faces,
    then the segments in ``block`` rows of at most ``windows_per_block``, in time order (cut together)."""

    def __init__(self, settings: AnnotateSettings, fps: float):
        self.s, self.fps = settings, fps

    def __call__(self, batch: dict):
        from .segments import plan_segments

        for vid, payload in zip(batch["video_id"], batch["payload"]):
            vid, meta, faces = str(vid), payload["meta"], payload.pop("faces")
            payload["segments"] = []
            if faces is not None and faces.num_rows:
                try:
                    duration = meta["duration_s"] or float(np.max(faces.column("time_s").to_numpy())) + 1.0 / self.fps
                    payload["segments"] = plan_segments(faces, duration, self.s.segment_s, self.s.stride_s,
                                                        self.s.min_face_frames, views=self.s.views)
                except Exception as exc:
                    payload["error"] = _error_text("segments", exc)
            yield _rows([vid], ["video"], [payload])
            order = sorted(payload["segments"], key=lambda s: (s.start_s, s.track_id))
            n = self.s.windows_per_block
            blocks = [{"path": meta["source_path"], "segments": order[i:i + n]} for i in range(0, len(order), n)]
            if blocks:
                yield _rows([vid] * len(blocks), ["block"] * len(blocks), blocks)


class CutClips:
    """A ``block`` row -> one ``clip`` row per segment: aligned uint8 [16, 224, 224, 3], re-decoding only the
    frames the block uses. Payload: ``key`` (``clip_key``), ``clip``, ``error`` ("" when fine)."""

    def __init__(self, decoder: str):
        self.decoder = get_decoder(decoder)

    def __call__(self, batch: dict):
        for vid, kind, payload in zip(batch["video_id"], batch["kind"], batch["payload"]):
            if kind == "block":
                yield self.block(str(vid), payload["path"], payload["segments"])
            else:
                yield _rows([str(vid)], [str(kind)], [payload])

    def block(self, vid: str, path: str, segments: list) -> dict:
        from .align import align_clip

        error = ""
        try:
            index = np.concatenate([s.frame_index for s in segments])
            times = np.concatenate([s.time_s for s in segments])
            index, first = np.unique(index, return_index=True)
            got = self.decoder.read_frames(path, index, times[first])
            frames = dict(zip(got["frame_index"].tolist(), got["frames"]))
            clips = [align_clip(frames, s.frame_index, s.kps5) for s in segments]
        except Exception as exc:  # e.g. a seek error mid-file: this video fails, the run goes on
            error = _error_text("clips", exc)
            clips = [None] * len(segments)
        payloads = [{"key": clip_key(s), "clip": c, "error": error} for s, c in zip(segments, clips)]
        return _rows([vid] * len(segments), ["clip"] * len(segments), payloads)


def clip_key(s) -> str:
    """"track:segment:view", a clip's name within its video."""
    return f"{s.track_id}:{s.segment}:{s.view}"


class TimelineAssembler:
    """Collects each video's segments and classified clips, in whatever order they come; when all are in, writes
    the video's timeline file atomically (one row per track and window, the views' probabilities averaged) and
    returns its record."""

    def __init__(self, out_dir: Path, settings_hash: str, classifier, model_name: str, sources: dict[str, Source]):
        self.out_dir, self.settings_hash, self.classifier = out_dir, settings_hash, classifier
        self.model_name = model_name
        self.sources = sources
        self.plans: dict[str, list] = {}
        self.probs: dict[str, dict[str, np.ndarray]] = {}
        self.errors: dict[str, str] = {}

    def plan(self, vid: str, meta: dict, segments: list, error: str | None = None) -> dict | None:
        """The video's face meta and segments; returns its record when nothing is left to wait for."""
        if meta["status"] == "error" or error:
            self.probs.pop(vid, None)
            return {**self.record(vid, segments), "status": "error", "error": error or meta["error"]}
        if not segments:  # no_faces, or faces too briefly on screen for any segment (ok, empty)
            return {**self.record(vid, []), "status": meta["status"],
                    "timeline": self.write(self.sources[vid], [], {}, meta["status"])}
        self.plans[vid] = segments
        return self.complete(vid)

    def add(self, vid: str, key: str, probs: np.ndarray, error: str) -> dict | None:
        """One classified clip; returns the video's record when it was the last one."""
        if error:
            self.errors.setdefault(vid, error)
        self.probs.setdefault(vid, {})[key] = probs
        return self.complete(vid)

    def complete(self, vid: str) -> dict | None:
        segments = self.plans.get(vid)
        if segments is None or len(self.probs.get(vid, {})) < len(segments):
            return None
        probs, error = self.probs.pop(vid), self.errors.pop(vid, None)
        del self.plans[vid]
        if error:
            return {**self.record(vid, segments), "status": "error", "error": error}
        path = self.write(self.sources[vid], segments, probs)
        return {**self.record(vid, segments), "status": "ok", "timeline": path}

    def record(self, vid: str, segments: list) -> dict:
        return {"video_id": vid, "video_path": self.sources[vid].path,
                "n_segments": len({(s.track_id, s.segment) for s in segments}),
                "n_tracks": len({s.track_id for s in segments}), "timeline": None, "error": None}

    def write(self, src: Source, segments: list, probs: dict, status: str = "ok") -> str:
        from .timeline import timeline_path, timeline_table, write_timeline

        windows: dict[tuple[int, int], list] = {}  # (track, segment) -> its views, in plan order
        for s in segments:
            windows.setdefault((s.track_id, s.segment), []).append(s)
        first = [views[0] for views in windows.values()]  # a row's times, face count and box: its first view's
        rows = {"track_id": np.array([s.track_id for s in first], np.int32),
                "segment": np.array([s.segment for s in first], np.int32),
                "start_s": np.array([s.start_s for s in first], np.float64),
                "end_s": np.array([s.end_s for s in first], np.float64),
                "n_face_frames": np.array([s.n_face_frames for s in first], np.int16),
                "bbox": np.array([s.bbox_mean for s in first], np.float32).reshape(-1, 4)}
        p = np.stack([np.mean([probs[clip_key(s)] for s in views], axis=0) for views in windows.values()]) \
            if windows else np.zeros((0, len(self.classifier.class_names)), np.float32)
        table = timeline_table(src.video_id, src.path, rows, p.astype(np.float32), self.classifier.class_names,
                               self.model_name, self.settings_hash, status)
        path = timeline_path(self.out_dir, src.video_id, src.path)
        write_timeline(table, path)
        return str(path)


def run_annotate(paths, out_dir: str | Path, cache_dir: str | Path | None = None,
                 faces: FaceSettings = FaceSettings(), settings: AnnotateSettings = AnnotateSettings(),
                 device: str = "auto", address: str | None = None, force: bool = False,
                 progress: bool = True) -> AnnotateResult:
    """Videos -> one emotion timeline Parquet per video under ``out_dir`` (+ ``manifest.json``)."""
    import ray
    from tqdm import tqdm

    from .classify import ClassifyClips, resolve_classifier
    from .timeline import is_complete, read_timeline_meta, timeline_path

    t0, t0_wall = time.perf_counter(), time.time()
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir else out_dir / "cache"
    # 0. everything that can fail for lack of a file fails now, before any work
    det_path, lm_path, face_record, face_key = prepare_faces(faces)
    classifier = resolve_classifier(settings.weights, settings.labels, settings.s2d_landmark_weights)
    model_name = settings.weights if classifier.path is None or Path(settings.weights).name != classifier.path.name \
        else classifier.path.name
    record = {"faces": face_key, "classifier": classifier.fingerprint,
              **{k: v for k, v in asdict(settings).items() if k not in ("batch_size", "windows_per_block", "weights",
                                                                         "labels", "s2d_landmark_weights")}}
    key = cache.settings_hash(record)
    result = AnnotateResult(out_dir, key, warning=classifier.warning)
    sources = find_videos(paths)
    done: dict[str, dict] = {}
    for s in sources:  # 1. complete timelines of the same settings are kept (unless --force)
        path = timeline_path(out_dir, s.video_id, s.path)
        if not force and is_complete(path, key):
            table = pq.read_table(path, columns=["track_id"])
            done[s.video_id] = {"video_id": s.video_id, "video_path": s.path, "error": None,
                                "status": read_timeline_meta(path)["status"], "timeline": str(path),
                                "n_segments": table.num_rows,
                                "n_tracks": len(set(table.column("track_id").to_pylist())), "skipped": True}
    result.skipped = len(done)
    todo = [s for s in sources if s.video_id not in done]

    if todo:
        cached = {s.video_id for s in todo if cache.read_entry(cache_dir, face_key, s.video_id) is not None}
        init_ray(address)
        device = pick_device(device)
        cpus, gpus = _cluster()
        pools = plan_pools(cpus, gpus if device == "cuda" else 0, emotions=True)
        # 2. faces: decode, detect, landmarks, tracks and the cache entry (or the entry as cached)
        ds = face_stages(_inputs(todo, cached), faces, det_path, lm_path, device, pools, cache_dir, face_key,
                         face_record, todo, detect=len(cached) < len(todo))
        # 3. segments per track, from the video's tracked faces
        ds = ds.map_batches(PlanSegments, batch_size=1, **pools["plan"].args(),
                            fn_constructor_kwargs=dict(settings=settings, fps=faces.fps))
        # 4. clips: re-decode only the frames the segments use, align each face to 224x224
        ds = ds.map_batches(CutClips, batch_size=1, **pools["cut"].args(),
                            fn_constructor_kwargs=dict(decoder=faces.decoder))
        # 5. S2D: CPU actors, or an actor per GPU
        ds = ds.map_batches(ClassifyClips, batch_size=None, **pools["s2d"].args(),
                            fn_constructor_kwargs=dict(classifier=classifier, device=device,
                                                       batch_size=settings.batch_size,
                                                       crash_marker=os.environ.get("S2D_FAULT_INJECT_MARKER")))
        # 6. in the driver: one timeline file per video, written when its last clip is in
        by_id = {s.video_id: s for s in todo}
        assembler = TimelineAssembler(out_dir, key, classifier, model_name, by_id)
        face_metas: dict[str, dict] = {}
        result.faces = FacesResult(cache_dir, face_key, cached=len(cached))
        with tqdm(total=len(todo), unit="video", desc="videos", disable=not progress) as vbar, \
                tqdm(total=0, unit="clip", desc="clips", disable=not progress) as cbar:
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    for vid, kind, payload in zip(batch["video_id"], batch["kind"], batch["payload"]):
                        vid = str(vid)
                        if kind == "video":
                            face_metas[vid] = payload["meta"]
                            result.faces.decoded += bool(payload["decoded"])
                            result.faces.wall_seconds = max(result.faces.wall_seconds, payload["tracked_at"] - t0_wall)
                            cbar.total += len(payload["segments"])
                            cbar.refresh()
                            rec = assembler.plan(vid, payload["meta"], payload["segments"], payload.get("error"))
                        else:
                            cbar.update()
                            result.clips += 0 if payload["error"] else 1
                            result.s2d_seconds += payload.get("s2d_seconds", 0.0)
                            rec = assembler.add(vid, payload["key"], payload["probs"], payload["error"])
                        if rec is not None:
                            done[vid] = rec
                            if rec["timeline"] and result.first_timeline_seconds is None:
                                result.first_timeline_seconds = time.perf_counter() - t0
                            vbar.set_postfix_str(f"{Path(rec['video_path']).name}: {rec['status']}")
                            vbar.update()
                message = "pipeline: the video never completed (an actor holding it was restarted?); run again"
            except Exception as exc:  # the chain itself broke: what is left failed; what is written stays
                message = f"pipeline: {type(exc).__name__}: {exc}"
                traceback.print_exc()
        for s in todo:
            if s.video_id not in done:
                done[s.video_id] = {"video_id": s.video_id, "video_path": s.path, "status": "error", "error": message,
                                    "timeline": None, "n_segments": 0, "n_tracks": 0}
        result.faces.videos = [face_metas.get(s.video_id) or _error_meta(s, face_record, message) for s in todo]
    result.videos = [done[s.video_id] for s in sources]
    result.wall_seconds = time.perf_counter() - t0
    write_manifest(result, record, settings, faces, classifier)
    return result
def write_manifest(result: AnnotateResult, record: dict, settings: AnnotateSettings, faces: FaceSettings,
                   classifier) -> Path:
    """``<out>/manifest.json``: settings, weights, versions, per-video status and timings (atomic)."""
    manifest = {"settings_hash": result.settings_hash, "settings": asdict(settings), "face_settings": asdict(faces),
                "face_settings_hash": record["faces"], "weights": classifier.fingerprint,
                "labels": list(classifier.class_names), "warning": result.warning,
                "versions": cache.library_versions(), "wall_seconds": result.wall_seconds,
                "clips_classified": result.clips, "s2d_seconds": result.s2d_seconds, "skipped": result.skipped,
                "videos": result.videos,
                "faces_wall_seconds": result.faces.wall_seconds if result.faces else 0.0,
                "first_timeline_seconds": result.first_timeline_seconds}
    result.out_dir.mkdir(parents=True, exist_ok=True)
    path = result.out_dir / "manifest.json"
    tmp = path.with_name(f".manifest.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(tmp, path)
    return path
