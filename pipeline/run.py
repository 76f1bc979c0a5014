"""The Ray Data chains, each readable top to bottom.

faces:   list/probe -> decode (chunks of sampled frames) -> detect -> landmarks -> [driver] track -> cache

Heavy stages run as Ray Data actor pools over rows of one of two kinds, ``chunk`` (a bounded run of frames
of one video and, downstream, its faces) and ``end`` (one per video, after its last chunk: what the decoder
saw, or why it failed). The driver consumes the stream, and when a video has all its chunks it links the faces
into tracks and writes the video's cache entry atomically; memory held per video is its face rows only.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------------------------------ stages
def _rows(video_ids: list[str], kinds: list[str], payloads: list[dict]) -> dict:
    return {"video_id": np.array(video_ids), "kind": np.array(kinds), "payload": np.array(payloads, dtype=object)}


def _error_text(stage: str, exc: BaseException) -> str:
    if isinstance(exc, DecodeError):
        return str(exc)
    return f"{stage}: {type(exc).__name__}: {exc}"


class DecodeChunks:
    """A video -> its sampled frames in chunks of at most ``chunk_size``, then one ``end`` row."""

    def __init__(self, decoder: str, fps: float, chunk_size: int):
        self.decoder = get_decoder(decoder)
        self.fps, self.chunk_size = fps, chunk_size

    def __call__(self, batch: dict):
        for vid, path in zip(batch["video_id"], batch["path"]):
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


# ------------------------------------------------------------------------------------------ the driver side
@dataclass
class FacesResult:
    cache_dir: Path
    settings_hash: str
    videos: list[dict] = field(default_factory=list)  # meta rows, in input order
    decoded: int = 0  # videos that went through the decoder in this run
    cached: int = 0  # videos whose complete cache entry was reused (no decoder, no detector)
    wall_seconds: float = 0.0

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

    def add(self, vid: str, kind: str, payload: dict) -> dict | None:
        """Feed one row; returns the video's meta when the video is complete and written."""
        if kind == "end":
            self.ends[vid] = payload
        else:
            self.parts.setdefault(vid, []).append(payload)
        end = self.ends.get(vid)
        if end is None or len(self.parts.get(vid, [])) < end["n_chunks"]:
            return None
        return self.finish(vid, self.parts.pop(vid, []), self.ends.pop(vid))

    def finish(self, vid: str, parts: list[dict], end: dict) -> dict:
        errors = [p["error"] for p in parts if "error" in p]
        status, error = end["status"], end["error"]
        if errors and status != "error":
            status, error = "error", errors[0]
        faces = self.faces(vid, sorted((p for p in parts if "faces" in p), key=lambda p: p["chunk"]))
        if status == "ok" and len(faces["frame_index"]) == 0:
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
        return cache.read_meta(self.cache_dir, self.settings_hash, vid)

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


def _error_meta(src: Source, settings: dict, message: str) -> dict:
    return {"video_id": src.video_id, "source_path": src.path, "duration_s": None, "native_fps": None,
            "frame_count": 0, "sampled_frames": 0, "rotation": 0, "width": None, "height": None,
            "settings": settings, "status": "error", "error": message, "decode_seconds": None, "total_seconds": 0.0}


# ------------------------------------------------------------------------------------------ the faces chain
def run_faces(paths, cache_dir: str | Path, settings: FaceSettings = FaceSettings(), device: str = "auto",
              address: str | None = None, progress: bool = True) -> FacesResult:
    """Videos (files or folders) -> one landmark-cache entry per video. Re-runs reuse complete entries."""
    import ray
    from ray.data import ActorPoolStrategy
    from tqdm import tqdm

    t0 = time.perf_counter()
    det_path, lm_path, record, key = prepare_faces(settings)  # a missing weights file stops here
    cache_dir = Path(cache_dir)
    sources = paths if paths and isinstance(paths[0], Source) else find_videos(paths)
    by_id = {s.video_id: s for s in sources}
    result = FacesResult(cache_dir, key)
    done: dict[str, dict] = {}
    for s in sources:  # 1. the cache: complete entries are reused, nothing is decoded for them
        entry = cache.read_entry(cache_dir, key, s.video_id)
        if entry is not None:
            done[s.video_id] = entry[1]
    result.cached = len(done)
    todo = [s for s in sources if s.video_id not in done]

    if todo:
        init_ray(address)
        device = pick_device(device)
        gpu = device == "cuda"
        cpus = max(1.0, ray.cluster_resources().get("CPU", 1.0))
        pool = max(1, int(cpus // 4))  # per stage; with 2 CPUs: 0.5 + 1 + 0.5 reserved, nothing starves
        ds = ray.data.from_items([{"video_id": s.video_id, "path": s.path} for s in todo],
                                 override_num_blocks=len(todo))
        # 2. decode: sampled frames in bounded chunks, plus one end row per video
        ds = ds.map_batches(DecodeChunks, batch_size=1, compute=ActorPoolStrategy(size=pool), num_cpus=0.5,
                            fn_constructor_kwargs=dict(decoder=settings.decoder, fps=settings.fps,
                                                       chunk_size=settings.chunk_size))
        # 3. detect faces in every sampled frame
        ds = ds.map_batches(DetectFaces, batch_size=1, compute=ActorPoolStrategy(size=pool),
                            num_cpus=0.5 if gpu else 1.0, num_gpus=0.5 if gpu else 0,
                            fn_constructor_kwargs=dict(weights=str(det_path), network=DETECTORS[settings.detector],
                                                       device=device, score_threshold=settings.score_threshold,
                                                       nms_threshold=settings.nms_threshold,
                                                       long_side=settings.long_side))
        # 4. 68 landmarks per face; frames are dropped after this stage
        ds = ds.map_batches(FindLandmarks, batch_size=1, compute=ActorPoolStrategy(size=pool), num_cpus=0.5,
                            num_gpus=0.25 if gpu else 0,
                            fn_constructor_kwargs=dict(backend=settings.landmarks,
                                                       weights=str(lm_path) if lm_path else None, device=device))
        # 5-6. in the driver: track each complete video and write its cache entry
        assembler = VideoAssembler(cache_dir, key, record, by_id, settings.max_gap_s)
        with tqdm(total=len(todo), unit="video", desc="faces", disable=not progress) as bar:
            try:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    for vid, kind, payload in zip(batch["video_id"], batch["kind"], batch["payload"]):
                        meta = assembler.add(str(vid), str(kind), payload)
                        if meta is not None:
                            done[str(vid)] = meta
                            result.decoded += 1
                            bar.set_postfix_str(f"{Path(meta['source_path']).name}: {meta['status']}")
                            bar.update()
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
# annotate: faces (run or reuse the cache) -> [driver] segments per track -> clips (re-decode + align)
#           -> S2D actors -> [driver] one timeline Parquet per video + a run manifest
@dataclass(frozen=True)
class AnnotateSettings:
    weights: str = "s2d-dfew"  # weights name, path, or "random-tiny" (untrained, for smoke tests)
    labels: str | None = None  # label set; default: what the weights were trained on
    s2d_landmark_weights: str | None = None  # S2D's landmark branch (MobileFaceNet); default: "mobilefacenet"
    segment_s: float = 2.0
    stride_s: float = 1.0
    min_face_frames: int = 8
    batch_size: int = 8  # clips per S2D forward
    windows_per_block: int = 8  # windows re-decoded together (bounds memory per task)


@dataclass
class AnnotateResult:
    out_dir: Path
    settings_hash: str
    videos: list[dict] = field(default_factory=list)  # per video: status, error, n_tracks, n_segments, timeline
    skipped: int = 0  # videos whose complete timeline was kept
    clips: int = 0  # clips classified in this run
    wall_seconds: float = 0.0
    faces: FacesResult | None = None
    warning: str | None = None

    def count(self, status: str) -> int:
        return sum(v["status"] == status for v in self.videos)

    def summary(self) -> str:
        return (f"videos: {self.count('ok')} ok, {self.count('no_faces')} no faces, {self.count('error')} failed "
                f"({self.skipped} already done); segments: {sum(v['n_segments'] for v in self.videos)}; "
                f"clips classified: {self.clips} in {self.wall_seconds:.1f} s")


class CutClips:
    """A block of one video's segments -> aligned uint8 clips [16, 224, 224, 3], re-decoding only their frames."""

    def __init__(self, decoder: str):
        self.decoder = get_decoder(decoder)

    def __call__(self, batch: dict):
        for vid, path, segments in zip(batch["video_id"], batch["path"], batch["segments"]):
            yield self.block(str(vid), str(path), segments)

    def block(self, vid: str, path: str, segments: list) -> dict:
        from .align import align_clip

        error = ""
        try:
            index = np.concatenate([s.frame_index for s in segments])
            times = np.concatenate([s.time_s for s in segments])
            index, first = np.unique(index, return_index=True)
            got = self.decoder.read_frames(path, index, times[first])
            frames = dict(zip(got["frame_index"].tolist(), got["frames"]))
            clips = np.stack([align_clip(frames, s.frame_index, s.kps5) for s in segments])
        except Exception as exc:  # e.g. a seek error mid-file: this video fails, the run goes on
            error = _error_text("clips", exc)
            clips = np.zeros((len(segments), len(segments[0].frame_index), 224, 224, 3), np.uint8)
        return {"video_id": np.array([vid] * len(segments)),
                "key": np.array([f"{s.track_id}:{s.segment}" for s in segments]),
                "clip": clips, "error": np.array([error] * len(segments))}


class TimelineAssembler:
    """Collects each video's classified clips; when all are in, writes its timeline file atomically."""

    def __init__(self, out_dir: Path, settings_hash: str, classifier, model_name: str):
        self.out_dir, self.settings_hash, self.classifier, self.model_name = out_dir, settings_hash, classifier, model_name
        self.plans: dict[str, tuple[Source, list]] = {}
        self.probs: dict[str, dict[str, np.ndarray]] = {}
        self.errors: dict[str, str] = {}

    def expect(self, src: Source, segments: list) -> None:
        self.plans[src.video_id] = (src, segments)
        self.probs[src.video_id] = {}

    def add(self, vid: str, key: str, probs: np.ndarray, error: str) -> dict | None:
        """Feed one classified clip; returns the video's record when the video is complete."""
        if error:
            self.errors.setdefault(vid, error)
        self.probs[vid][key] = probs
        src, segments = self.plans[vid]
        if len(self.probs[vid]) < len(segments):
            return None
        return self.write(src, segments, self.probs.pop(vid), self.errors.pop(vid, None))

    def write(self, src: Source, segments: list, probs: dict, error: str | None) -> dict:
        from .timeline import timeline_path, timeline_table, write_timeline

        record = {"video_id": src.video_id, "video_path": src.path, "n_segments": len(segments),
                  "n_tracks": len({s.track_id for s in segments}), "timeline": None, "error": error}
        if error:
            return {**record, "status": "error"}
        rows = {"track_id": np.array([s.track_id for s in segments], np.int32),
                "segment": np.array([s.segment for s in segments], np.int32),
                "start_s": np.array([s.start_s for s in segments], np.float64),
                "end_s": np.array([s.end_s for s in segments], np.float64),
                "n_face_frames": np.array([s.n_face_frames for s in segments], np.int16),
                "bbox": np.array([s.bbox_mean for s in segments], np.float32).reshape(-1, 4)}
        p = np.stack([probs[f"{s.track_id}:{s.segment}"] for s in segments]) if segments else \
            np.zeros((0, len(self.classifier.class_names)), np.float32)
        table = timeline_table(src.video_id, src.path, rows, p, self.classifier.class_names, self.model_name,
                               self.settings_hash, "ok")
        path = timeline_path(self.out_dir, src.video_id, src.path)
        write_timeline(table, path)
        return {**record, "status": "ok", "timeline": str(path)}


def write_empty_timeline(out_dir: Path, src: Source, classifier, model_name: str, settings_hash: str,
                         status: str) -> str:
    from .timeline import timeline_path, timeline_table, write_timeline

    empty = {"track_id": np.zeros(0, np.int32), "segment": np.zeros(0, np.int32), "start_s": np.zeros(0),
             "end_s": np.zeros(0), "n_face_frames": np.zeros(0, np.int16), "bbox": np.zeros((0, 4), np.float32)}
    table = timeline_table(src.video_id, src.path, empty, np.zeros((0, len(classifier.class_names)), np.float32),
                           classifier.class_names, model_name, settings_hash, status)
    path = timeline_path(out_dir, src.video_id, src.path)
    write_timeline(table, path)
    return str(path)


def run_annotate(paths, out_dir: str | Path, cache_dir: str | Path | None = None,
                 faces: FaceSettings = FaceSettings(), settings: AnnotateSettings = AnnotateSettings(),
                 device: str = "auto", address: str | None = None, force: bool = False,
                 progress: bool = True) -> AnnotateResult:
    """Videos -> one emotion timeline Parquet per video under ``out_dir`` (+ ``manifest.json``)."""
    import ray
    from ray.data import ActorPoolStrategy
    from tqdm import tqdm

    from .classify import ClassifyClips, resolve_classifier
    from .segments import plan_segments
    from .timeline import is_complete, timeline_path

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    cache_dir = Path(cache_dir) if cache_dir else out_dir / "cache"
    # 0. everything that can fail for lack of a file fails now, before any work
    _, _, face_record, face_key = prepare_faces(faces)
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
            from .timeline import read_timeline_meta

            table = pq.read_table(path, columns=["track_id"])
            done[s.video_id] = {"video_id": s.video_id, "video_path": s.path, "status": read_timeline_meta(path)["status"],
                                "error": None, "timeline": str(path), "n_segments": table.num_rows,
                                "n_tracks": len(set(table.column("track_id").to_pylist())), "skipped": True}
    result.skipped = len(done)
    todo = [s for s in sources if s.video_id not in done]

    if todo:
        # 2. the face stage (cache reused where complete)
        result.faces = run_faces(todo, cache_dir, faces, device=device, address=address, progress=progress)
        device = pick_device(device)
        assembler = TimelineAssembler(out_dir, key, classifier, model_name)
        blocks = []
        for src, meta in zip(todo, result.faces.videos):
            base = {"video_id": src.video_id, "video_path": src.path, "n_segments": 0, "n_tracks": 0,
                    "timeline": None, "error": meta["error"]}
            if meta["status"] == "error":
                done[src.video_id] = {**base, "status": "error"}
                continue
            # 3. segments per track, planned from the landmark cache
            table, _ = cache.read_entry(cache_dir, face_key, src.video_id)
            rows = table.to_pandas()
            duration = meta["duration_s"] or (float(rows.time_s.max()) + 1.0 / faces.fps if len(rows) else 0.0)
            segments = plan_segments(rows, duration, settings.segment_s, settings.stride_s, settings.min_face_frames)
            if not segments:
                status = meta["status"]  # no_faces, or faces too briefly on screen for any segment (ok, empty)
                done[src.video_id] = {**base, "status": status, "timeline": write_empty_timeline(
                    out_dir, src, classifier, model_name, key, status)}
                continue
            assembler.expect(src, segments)
            order = sorted(segments, key=lambda s: (s.start_s, s.track_id))
            for i in range(0, len(order), settings.windows_per_block):
                blocks.append({"video_id": src.video_id, "path": src.path,
                               "segments": order[i:i + settings.windows_per_block]})
        n_clips = sum(len(b["segments"]) for b in blocks)
        if blocks:
            gpus = ray.cluster_resources().get("GPU", 0) if device == "cuda" else 0
            cpus = max(1.0, ray.cluster_resources().get("CPU", 1.0))
            ds = ray.data.from_items(blocks, override_num_blocks=len(blocks))
            # 4. clips: re-decode only the frames the segments use, align each face to 224x224
            ds = ds.map_batches(CutClips, batch_size=1, compute=ActorPoolStrategy(size=max(1, int(cpus // 4))),
                                num_cpus=0.5, fn_constructor_kwargs=dict(decoder=faces.decoder))
            # 5. S2D: an actor per GPU, or CPU actors
            ds = ds.map_batches(ClassifyClips, batch_size=settings.batch_size,
                                compute=ActorPoolStrategy(size=max(1, int(gpus)) if gpus else max(1, int(cpus // 2))),
                                num_gpus=1 if gpus else 0, num_cpus=1,
                                fn_constructor_kwargs=dict(classifier=classifier, device=device,
                                                           crash_marker=os.environ.get("S2D_FAULT_INJECT_MARKER")))
            # 6. in the driver: one timeline file per video, written when its last clip is in
            with tqdm(total=n_clips, unit="clip", desc="emotions", disable=not progress) as bar:
                for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    for vid, k, probs, error in zip(batch["video_id"], batch["key"], batch["probs"], batch["error"]):
                        bar.update()
                        result.clips += 0 if error else 1
                        rec = assembler.add(str(vid), str(k), probs, str(error))
                        if rec is not None:
                            done[rec["video_id"]] = rec
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
                "clips_classified": result.clips, "skipped": result.skipped, "videos": result.videos,
                "faces_wall_seconds": result.faces.wall_seconds if result.faces else 0.0}
    result.out_dir.mkdir(parents=True, exist_ok=True)
    path = result.out_dir / "manifest.json"
    tmp = path.with_name(f".manifest.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=1, default=str))
    os.replace(tmp, path)
    return path
