"""The face actor: one unit of work (a video, or a time shard of one) in one process, frames never leave it.

    decode (sampled by PTS) -> detect (RetinaFace, frames batched) -> 68 landmarks -> track online (cut at cuts)
        -> each face cut as its model's crop (``crops.Crop``) -> each window's 16-frame clip as soon as it closes
                                                       -> each track's highest-score face, its report thumbnail
                                                       -> each track's best few faces (``identity.TrackChips``),
                                                          their descriptors at the unit's end (persons)

``run_unit`` is that loop as a plain generator over its parts (tested without Ray); ``FaceWorker`` is the Ray
Data callable around it, which loads the detector and landmark network once, on first use (a run whose videos are
all cached never loads them). Out come ``Clip`` items as windows close and, last, one ``UnitFaces`` per unit.
A unit whose video has a complete landmark-cache entry (``Unit.cached``) takes its faces and track ids from the
entry (matched by frame time) instead of the detector: the clips are cut from a second decode, nothing else runs.
A still image is a unit of one frame (frame 0 at time 0): each of its faces leaves as a one-frame clip.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .align import align_face
from .crops import OUR_CROP, Crop
from .cuts import CutDetector
from .decode import DecodeError, FrameBatches, get_decoder, sampling_step
from .identity import TrackChips, track_descriptors
from .images import image_frames
from .segments import OnlineWindows, Segment
from .settings import DETECTORS, AnnotateSettings, FacePlan, FaceSettings
from .thumbnails import thumbnail_uri
from .track import OnlineTracker
from .units import Clip, Unit, UnitFaces, empty_faces, items, keep_best

FRAME_BYTES = 64 << 20  # frames per detector forward: at most this many bytes of decoded frames (one 8K frame)


def error_text(stage: str, exc: BaseException) -> str:
    return str(exc) if isinstance(exc, DecodeError) else f"{stage}: {type(exc).__name__}: {exc}"


def analysed(analyse: Callable, batches: Iterable[list], workers: int = 1) -> Iterator[tuple[list, list]]:
    """(batch, analyse(batch)) in the batches' order. CPU with ``workers`` > 1: up to ``workers`` batches are
    analysed at once, each in a thread of its own with one intra-op thread (torch releases the GIL; no OpenMP
    barrier waits across the cores), while this thread decodes the next. A batch over ``FRAME_BYTES / workers``
    (one frame that large: 8K) is analysed alone, with every thread, so large frames are held no longer than
    before."""
    if workers <= 1:
        for batch in batches:
            yield batch, analyse(batch)
        return
    from .cluster import torch_threads

    with ThreadPoolExecutor(workers, initializer=torch_threads, initargs=(1,)) as pool:
        pending: deque = deque()
        for batch in batches:
            alone = sum(f.nbytes for _, _, f in batch) > FRAME_BYTES // workers
            while pending and (alone or len(pending) >= workers):
                done, future = pending.popleft()
                yield done, future.result()
            if alone:
                torch = torch_threads(workers)
                try:
                    results = analyse(batch)
                finally:
                    torch.set_num_threads(1)
                yield batch, results
            else:
                pending.append((batch, pool.submit(analyse, batch)))
        for done, future in pending:
            yield done, future.result()


def cached_faces(table, start_s: float = 0.0, end_s: float | None = None) -> Callable:
    """A complete cache entry -> analyse(batch) giving its rows per frame (matched by time) with their track ids.
    ``start_s``/``end_s``: the unit's decoded range (its rows outside it are not expected)."""
    t = table.column("time_s").to_numpy()
    fixed = {k: table.column(k).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(len(t), n)
             for k, n in (("bbox", 4), ("kps5", 10), ("landmarks68", 136))}
    cols = {"score": table.column("score").to_numpy(), "track_id": table.column("track_id").to_numpy(), **fixed}
    rows: dict[float, list[int]] = {}
    for i, ti in enumerate(t.tolist()):
        if ti >= start_s - 1e-6 and (end_s is None or ti < end_s):
            rows.setdefault(ti, []).append(i)

    def analyse(batch):
        out = []
        for _, ti, _ in batch:
            r = rows.pop(ti, [])
            out.append(({"bbox": cols["bbox"][r], "score": cols["score"][r], "kps5": cols["kps5"][r]},
                        cols["landmarks68"][r].reshape(-1, 68, 2), cols["track_id"][r].astype(np.int32)))
        return out

    analyse.unmatched = rows  # what no decoded frame matched (checked at the end of the unit)
    return analyse


def run_unit(unit: Unit, decoder, analyse: Callable, s: FaceSettings,
             a: AnnotateSettings | None, workers: int = 1, crops: dict[str, Crop] | None = None,
             describe: Callable | None = None) -> Iterator[Clip | UnitFaces]:
    """The per-unit loop (see the module docstring). ``analyse(batch of (index, time, frame))`` -> per frame
    (detections {"bbox" [k,4], "score" [k], "kps5" [k,10]}, landmarks [k,68,2], track ids [k] or None: tracked
    here), run on ``workers`` batches at once (``analysed``). ``a``: the annotate settings (windows and clips), or
    None for faces only. ``crops``: {"video": ..., "image": ...}, the crop each kind's model takes (default
    ``OUR_CROP``). ``describe(chips [n,150,150,3])`` -> descriptors [n,D]: each track's own best faces are described
    at the unit's end (``UnitFaces.descriptors``); None: none are (identities off, or faces from the cache). Never
    raises: a failure ends the unit with an ``error`` status (clips already sent stay counted)."""
    started = time.perf_counter()
    info = unit.info or {}
    image = bool(info.get("image"))
    crop = (crops or {}).get("image" if image else "video", OUR_CROP)
    step = sampling_step(s.fps, info.get("native_fps"))
    tracker, cuts = OnlineTracker(step, s.max_gap_s), CutDetector()
    windows = OnlineWindows(step, info.get("duration_s"), a.segment_s, a.stride_s, a.min_face_frames, a.views,
                            own_start_s=unit.own_start_s, own_end_s=unit.own_end_s) if a and not image else None
    done = UnitFaces(unit.video_id, unit.index, unit.count, info=unit.info,
                     from_start=unit.start_s <= 0 or s.decoder == "decord")
    parts: list[dict] = []
    sampled: list[tuple[int, float]] = []
    best: dict[int, tuple[float, np.ndarray]] = {}  # each track's highest-score aligned face: its thumbnail
    chips = TrackChips() if describe is not None else None
    frames = None
    try:
        if unit.error:
            raise DecodeError(unit.error)
        source = image_frames(unit.path) if image else decoder.iter_frames(unit.path, s.fps, unit.start_s, unit.end_s)
        frames = FrameBatches(source, s.batch_frames, FRAME_BYTES // workers)
        for batch, results in analysed(analyse, frames, workers):
            for (index, t, frame), (det, marks, ids) in zip(batch, results):
                own = unit.own_start_s <= t < unit.own_end_s
                if ids is None:  # tracked here (not from the cache)
                    if cuts(frame):
                        tracker.cut()
                    ids = tracker.update(t, det["bbox"], marks)
                rows = face_rows(index, t, det, marks, ids, own)
                parts.append(rows)
                sampled.append((index, t))
                note_frame(done, frame, own, len(rows["track_id"]))
                if own or image:
                    keep_faces(rows, t, frame, best if a is not None else None, chips)
                if a is not None:
                    yield from counted(done, image_clips(unit, rows, frame, crop) if image else
                                       window_clips(unit, windows, t, index, rows, frame, crop))
        if windows is not None:
            yield from counted(done, (Clip(unit.video_id, unit.index, seg, np.stack(slots))
                                      for seg, slots in windows.finish()))
        if getattr(analyse, "unmatched", None):
            raise ValueError(f"{len(analyse.unmatched)} frame times of the landmark cache entry were not decoded "
                             "(the video or the decoder changed?); run again with --cache NEWDIR")
        done.frame_count = frames.count
        if chips is not None:
            tracks, cut = chips.chips()
            done.descriptors = track_descriptors(tracks, describe(cut)) if len(cut) else {}
        done.thumbs = {tid: (score, thumbnail_uri(face)) for tid, (score, face) in best.items()}
    except Exception as exc:  # a bad file fails its own video, never the run
        done.status, done.error = "error", error_text("faces", exc)
    done.faces = {k: np.concatenate([p[k] for p in parts]) for k in empty_faces()} if parts else empty_faces()
    done.sampled = (np.array([i for i, _ in sampled], np.int64), np.array([t for _, t in sampled], np.float64))
    done.decode_seconds = frames.seconds if frames else 0.0
    done.seconds = time.perf_counter() - started
    yield done


def face_rows(index: int, t: float, det: dict, marks, ids, own: bool) -> dict:
    """One frame's faces as face columns (``units.FACE_COLUMNS`` and ``own``: in the unit's own time range)."""
    k = len(ids)
    return {"frame_index": np.full(k, index, np.int64), "time_s": np.full(k, t),
            "face": np.arange(k, dtype=np.int16), "track_id": np.asarray(ids, np.int32),
            "score": np.asarray(det["score"], np.float32), "bbox": np.asarray(det["bbox"], np.float32).reshape(k, 4),
            "kps5": np.asarray(det["kps5"], np.float32).reshape(k, 10),
            "landmarks68": np.asarray(marks, np.float32).reshape(k, 136), "own": np.full(k, own)}


def keep_faces(rows: dict, t: float, frame: np.ndarray, best: dict | None, chips: TrackChips | None) -> None:
    """A frame's own faces offered to each track's thumbnail (``best``, ``keep_best``) and descriptor chips (None:
    not kept)."""
    for tid, score, kps in zip(rows["track_id"], rows["score"], rows["kps5"]):
        if best is not None:
            keep_best(best, int(tid), float(score), lambda f=frame, k=kps: align_face(f, k))
        if chips is not None:
            chips.offer(int(tid), t, float(score), kps, frame)


def note_frame(done: UnitFaces, frame: np.ndarray, own: bool, faces: int) -> None:
    """A sampled frame's share of the unit's counts."""
    done.n_sampled_own += own
    done.height, done.width = frame.shape[:2]
    if faces and done.first_face_at is None:
        done.first_face_at = time.time()


def counted(done: UnitFaces, clips: Iterable[Clip]) -> Iterator[Clip]:
    """The clips, each counted in ``done.n_clips`` as it leaves."""
    for clip in clips:
        done.n_clips += 1
        yield clip


def window_clips(unit: Unit, windows: OnlineWindows, t: float, index: int, rows: dict, frame: np.ndarray,
                 crop: Crop) -> Iterator[Clip]:
    """A video frame's faces cut as the model's crop, given to the windows -> the clips of the windows it closes."""
    cut = [crop.cut(frame, box, kps) for box, kps in zip(rows["bbox"], rows["kps5"])]
    for seg, slots in windows.add(t, index, rows["track_id"], rows["kps5"], rows["bbox"], cut):
        yield Clip(unit.video_id, unit.index, seg, np.stack(slots))


def image_clips(unit: Unit, faces: dict, frame: np.ndarray, crop: Crop = OUR_CROP) -> list[Clip]:
    """A still image's faces (its face columns) -> one one-frame clip each: segment 0 at time 0, its face's crop."""
    return [Clip(unit.video_id, unit.index,
                 Segment(int(tid), 0, 0.0, 0.0, np.zeros(1, np.int64), np.zeros(1), kps[None], box[None], 1),
                 crop.cut(frame, box, kps)[None])
            for tid, kps, box in zip(faces["track_id"], faces["kps5"], faces["bbox"])]


class FaceWorker:
    """Ray Data callable: rows {"item": Unit} -> rows {"item": Clip | UnitFaces}, item by item as they come."""

    def __init__(self, plan: FacePlan, device: str = "cpu", emotions: AnnotateSettings | None = None,
                 threads: int = 1, crops: dict[str, Crop] | None = None):
        from .cluster import torch_threads

        # CPU: ``threads`` batches analysed at once, one intra-op thread each (no core waits at an OpenMP barrier)
        self.workers = threads if device == "cpu" else 1
        torch_threads(1 if self.workers > 1 else threads)
        self.plan, self.device, self.emotions, self.crops = plan, device, emotions, crops
        self.decoder = get_decoder(plan.settings.decoder)
        self.detector = self.landmarker = self.recognition = None
        self.loading = threading.Lock()

    def analyse(self, batch):
        """Detections and landmarks of a batch of frames (models loaded on first use)."""
        s = self.plan.settings
        with self.loading:
            if self.detector is None:
                self.load(s)
        frames = batch[0][2][None] if len(batch) == 1 else np.stack([f for _, _, f in batch])  # no copy of one
        dets = self.detector(frames)
        marks = self.landmarker(frames, [d["bbox"] for d in dets])
        return [(d, m, None) for d, m in zip(dets, marks)]

    def load(self, s: FaceSettings) -> None:
        from .detector import FaceDetector
        from .landmarks import get_landmarker

        self.detector = FaceDetector(self.plan.detector_path, DETECTORS[s.detector], device=self.device,
                                     score_threshold=s.score_threshold, nms_threshold=s.nms_threshold,
                                     long_side=s.long_side)
        lm = self.plan.landmark_path
        self.landmarker = get_landmarker(s.landmarks, str(lm) if lm else None, self.device)
        if self.plan.identity_path is not None:
            from s2d_model.faceapi import load_recognition_net

            self.recognition = load_recognition_net(self.plan.identity_path).to(self.device)

    def describe(self, chips: np.ndarray) -> np.ndarray:
        """Face descriptors [n,128] of aligned 150 px chips (face-api's recognition net), batched."""
        from s2d_model.faceapi import descriptors

        with self.loading:
            if self.detector is None:
                self.load(self.plan.settings)
        return descriptors(self.recognition, chips)

    def __call__(self, batch: dict):
        from .cluster import node_id

        for unit in batch["item"]:
            if unit.cached is None:
                analyse, workers = self.analyse, self.workers
                describe = self.describe if self.plan.identity_path is not None else None
            else:  # the entry holds its tracks' descriptors and persons
                analyse, workers, describe = cached_faces(unit.cached, unit.start_s, unit.end_s), 1, None
            for item in run_unit(unit, self.decoder, analyse, self.plan.settings, self.emotions, workers,
                                 self.crops, describe):
                if isinstance(item, UnitFaces):
                    item.node = node_id()
                yield items(item)
