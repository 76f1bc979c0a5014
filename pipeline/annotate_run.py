"""``run_annotate``: videos and images -> one emotion timeline Parquet each under ``out`` (+ ``manifest.json``,
``report.html``, overlays). The chain is drawn in the README's "Architecture"; this file reads top to bottom:

    1. run_annotate: check every input and weights file, keep complete timelines, drive the chain, write
    2. chain: units [driver] -> face actors (faces, each window's clip) -> S2D actors (probabilities)
    3. Timelines: the collector; when a video's units and clips are all in, its cache entry and timeline
    4. writers: the manifest (``manifest.py``), the overlays, the people across the run, the report

A video whose timeline is complete (its own, for the same settings) is skipped; one whose timeline differs only by
the identity threshold is re-grouped into persons from its landmark-cache entry (no decode, no S2D); one whose
landmark-cache entry is complete is not detected again (its clips are cut from the entry and a second decode). The
run folder shows each input once: the timelines (and overlays) of a file's earlier content are removed at the end
of the run. A still image is a unit of one frame whose faces go to S2D's static image model (``--image-weights``):
one timeline row per face. Before any work: the inputs exist, the outputs can be written, and the run folder's lock
is ours.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from s2d_model.weights import resolve_all

from . import cache, storage
from .classifier import Classifier, is_faceapi, resolve_classifier
from .cluster import resources
from .driver import Done, Video, drive, unit_rows
from .entries import cached_entries, error_meta, threshold, write_units
from .face_actor import FaceWorker
from .faces_run import FacesResult
from .images import is_image
from .manifest import VideoRecord, write_manifest
from .plans import plan_actors
from .precision import check_device, describe
from .progress import Progress, say
from .runlock import run_lock
from .s2d_actor import S2DWorker
from .settings import AnnotateSettings, FacePlan, FaceSettings, identity_name, plan_faces, timeline_record
from .sources import Source, check_paths, find_videos
from .timeline import (is_complete, read_timeline_meta, superseded, timeline_files, timeline_path, windows_table,
                       with_persons, write_timeline)
from .units import Clip, UnitFaces, video_thumbnails


@dataclass
class AnnotateResult:
    out_dir: Path | str  # a local folder, or a URI (s3://...)
    settings_hash: str
    cache_dir: Path | str | None = None  # the landmark cache it used
    records: list[VideoRecord] = field(default_factory=list)  # per input, in input order
    skipped: int = 0  # videos whose complete timeline was kept
    clips: int = 0  # clips classified in this run
    wall_seconds: float = 0.0
    s2d_seconds: float = 0.0  # time in the model, summed over clips
    first_timeline_seconds: float | None = None  # when the first timeline file of this run was written
    first_face_seconds: float | None = None  # from Ray being up to the first face found (face actor's clock)
    faces: FacesResult | None = None  # the face stage's part (its wall_seconds: when the last video's faces were in)
    warning: str | None = None
    interrupted: bool = False  # Ctrl-C / SIGTERM: the videos not done are marked "interrupted"
    report: Path | str | None = None  # OUT/report.html, once written
    report_error: str | None = None  # why the report could not be written (the run's outputs stand)
    identity_weights: list | None = None  # the face-recognition net's files (fingerprints; None: identities off)

    @property
    def videos(self) -> list[dict]:
        """The records as the manifest's rows."""
        return [asdict(r) for r in self.records]

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records)

    def summary(self) -> str:
        stop = f", {self.count('interrupted')} interrupted" if self.interrupted else ""
        return (f"videos: {self.count('ok')} ok, {self.count('no_faces')} no faces, {self.count('error')} failed{stop} "
                f"({self.skipped} already done); segments: {sum(r.n_segments for r in self.records)}; "
                f"clips classified: {self.clips} in {self.wall_seconds:.1f} s")


@dataclass(frozen=True)
class Labelling:
    """How one kind of input (videos, or still images) is labelled: its classifier, the model name its timeline
    rows carry, and the settings hash that marks its timelines complete (of ``timeline_record``)."""

    classifier: Classifier
    model: str
    key: str
    base: str  # the key of every identity threshold's timelines (``timeline_record``'s persons None)


# 1. the entry ---------------------------------------------------------------------------------------------------

def run_annotate(paths, out_dir: str | Path, cache_dir: str | Path | None = None,
                 faces: FaceSettings = FaceSettings(), settings: AnnotateSettings = AnnotateSettings(),
                 device: str = "auto", address: str | None = None, force: bool = False,
                 progress: bool = True, trust: bool = False, report: bool = True,
                 overlay: bool = False) -> AnnotateResult:
    """Videos -> one emotion timeline Parquet per video under ``out_dir`` (+ ``manifest.json``), then
    ``report.html`` (``report``) and, with ``overlay``, an overlay video per video with faces (``overlays/``).
    ``trust``: the S2D weights file may hold pickled code (only for a file you made or trust)."""
    t0 = time.perf_counter()
    out_dir = storage.location(out_dir)
    cache_dir = storage.location(cache_dir) if cache_dir else storage.join(out_dir, "cache")
    check_paths(paths, out_dir, cache_dir)  # what can fail for lack of a file fails now, before any work
    for folder in (out_dir, cache_dir):  # a real write (root ignores mode bits): NotWritable, before any work
        storage.check_writable(folder)
    sources = find_videos(paths, skip=[out_dir, cache_dir])  # a run folder inside an input folder: not input
    kinds = {kind(s) for s in sources}
    resolve_weights(kinds, faces, settings)  # every missing weights file named at once
    plan = plan_faces(faces)
    labellings = plan_labellings(kinds, settings, plan, trust)
    for lab in filter(None, labellings.values()):  # int8 with --device cuda: stops now (auto: in ``chain``)
        check_device(lab.classifier.used, device)
    main = labellings["video"] or labellings["image"]
    warning = "; ".join(lab.classifier.warning for lab in labellings.values() if lab and lab.classifier.warning)
    result = AnnotateResult(out_dir, main.key, cache_dir, warning=warning or None,
                            identity_weights=plan.record.get("identity_files"))
    with run_lock(out_dir):  # one run at a time in a run folder: a second stops with RunFolderBusy
        done = {} if force else {s.video_id: r for s in sources if (r := kept(s, out_dir, labellings, skipped=True))}
        result.skipped = len(done)
        todo = {s.video_id: s for s in sources if s.video_id not in done}
        entries = cached_entries(cache_dir, plan, todo) if todo else {}
        if not force:  # timelines of another identity threshold: persons re-grouped from the cache entry
            done.update({vid: r for vid, s in todo.items() if (r := regrouped(s, out_dir, labellings, entries))})
            todo = {vid: s for vid, s in todo.items() if vid not in done}
        if todo:
            timelines = Timelines(todo, plan, cache_dir, out_dir, labellings, entries, result, t0)
            records, result.interrupted = drive(
                todo, timelines, lambda left, dev: chain(timelines.videos(left), plan, settings, labellings, dev),
                "videos", address=address, device=device, progress=progress)
            done.update(records)
            result.faces.videos = [timelines.face_metas.get(vid) or error_meta(s, plan.record, records[vid].error)
                                   for vid, s in todo.items()]
        result.records = [done[s.video_id] for s in sources]
        remove_superseded(result.records, out_dir)
        result.wall_seconds = time.perf_counter() - t0
        write_manifest(result, plan.key, settings, faces, labellings)
        if overlay:  # from the outputs just written (the cache, the timelines, the manifest)
            write_overlays(result, progress)
            write_manifest(result, plan.key, settings, faces, labellings)  # with each video's overlay
        if report:
            write_report(result, threshold(faces))
    return result


def resolve_weights(kinds: set[str], faces: FaceSettings, settings: AnnotateSettings) -> None:
    """Every weights file the run needs, resolved at once (WeightsNotFound naming each missing one)."""
    weights = {"video": settings.weights, "image": settings.image_weights}
    resolve_all(list(dict.fromkeys([
        faces.detector_weights or faces.detector,
        (faces.landmark_weights or "mobilefacenet") if faces.landmarks == "mobilefacenet" else None,
        identity_name(faces),  # persons (None: identities off)
        # S2D's landmark branch (face-api's net has none)
        (settings.s2d_landmark_weights or "mobilefacenet") if not all(is_faceapi(weights[k]) for k in kinds) else None,
        *[weights[k] for k in sorted(kinds) if weights[k] != "random-tiny"]])))


def plan_labellings(kinds: set[str], settings: AnnotateSettings, plan: FacePlan,
                    trust: bool) -> dict[str, Labelling | None]:
    """Each kind's classifier (None for a kind the run has no input of), its model name and timeline key."""
    weights = {"video": settings.weights, "image": settings.image_weights}
    crops = {"video": settings.crop, "image": settings.image_crop}
    labellings = {}
    for k in ("video", "image"):
        if k not in kinds:
            labellings[k] = None
            continue
        c = resolve_classifier(weights[k], settings.labels if k == "video" else None, settings.s2d_landmark_weights,
                               trust, kind=k, crop=crops[k], frame_order=settings.frame_order if k == "video" else None,
                               precision=settings.precision)
        say(f"{k} model {weights[k]}: {describe(c.used)}")
        labellings[k] = labelling(c, weights[k], plan, settings)
    return labellings


def labelling(classifier: Classifier, weights: str, plan: FacePlan, settings: AnnotateSettings) -> Labelling:
    path = classifier.path
    model = weights if path is None or Path(weights).name != path.name else path.name
    key, base = (cache.settings_hash(timeline_record(plan.key, classifier.fingerprint, settings, classifier.input,
                                                     persons)) for persons in (threshold(plan.settings), None))
    return Labelling(classifier, model, key, base)


def kind(src: Source) -> str:
    return "image" if is_image(src.path) else "video"


def kept(s: Source, out_dir, labellings: dict, skipped: bool) -> VideoRecord | None:
    """The record of a video whose timeline is complete for these settings (None: it is not)."""
    path = timeline_path(out_dir, s.video_id, s.path)
    if (meta := is_complete(path, labellings[kind(s)].key, s.video_id)) is None:
        return None
    return record(s, path, meta["status"], storage.read_table(path, columns=["track_id", "person_id"]), skipped)


def record(s: Source, path, status: str, table, skipped: bool = False) -> VideoRecord:
    """The record of a video with a timeline (``table``: its rows, at least track_id and person_id)."""
    return VideoRecord(s.video_id, s.path, kind(s), status, timeline=str(path), n_segments=table.num_rows,
                       n_tracks=len(set(table.column("track_id").to_pylist())),
                       n_persons=len(set(table.column("person_id").to_pylist())), skipped=skipped)


def regrouped(s: Source, out_dir, labellings: dict, entries: dict) -> VideoRecord | None:
    """A video whose finished timeline differs from these settings only by the identity threshold, and whose cache
    entry is complete (``entries``, re-grouped by this threshold): its timeline rewritten with the entry's persons
    -> its record (None: the video must be run)."""
    lab, path = labellings[kind(s)], timeline_path(out_dir, s.video_id, s.path)
    meta = read_timeline_meta(path)
    if meta is None or meta["base_hash"] != lab.base or meta["video_id"] != s.video_id or s.video_id not in entries:
        return None
    rows = entries[s.video_id][0]
    persons = dict(zip(rows.column("track_id").to_pylist(), rows.column("person_id").to_pylist()))
    table = storage.read_table(path)
    if not set(table.column("track_id").to_pylist()) <= set(persons):  # not the entry's tracks: run it
        return None
    table = with_persons(table, persons, lab.key)
    write_timeline(table, path)
    return record(s, path, meta["status"], table)


def remove_superseded(records: list[VideoRecord], out_dir) -> None:
    """The timelines and overlays of the earlier content of each file with a timeline now (``superseded``)."""
    from .overlay import overlay_path

    files = timeline_files(out_dir)  # one listing, not one per input
    for r in records:
        if r.timeline is None:
            continue
        for old in superseded(files, r.video_id, r.video_path):
            old_id = storage.name(old).split(".")[1]  # <stem>.<video_id>.timeline.parquet
            storage.remove(overlay_path(out_dir, old_id, r.video_path))
            storage.remove(old)


# 2. the chain ---------------------------------------------------------------------------------------------------

def chain(videos: list[Video], plan: FacePlan, settings: AnnotateSettings, labellings: dict[str, Labelling | None],
          device: str):
    """The Ray Data chain over ``videos``, its actor pools planned on the nodes alive now."""
    for lab in filter(None, labellings.values()):  # the device auto picked: stops before any video is read
        check_device(lab.classifier.used, device)
    cpus, gpus, nodes = resources()
    pools = plan_actors(cpus, gpus if device == "cuda" else 0, nodes, emotions=True)
    crops = {k: lab.classifier.crop for k, lab in labellings.items() if lab is not None}
    # units: the driver probes each video and cuts long ones into time shards
    ds = unit_rows(videos, plan.settings, settings.segment_s, pools["faces"].size)
    # face actors: decode -> detect -> landmarks -> track -> each model's crop -> clips as windows close
    ds = ds.map_batches(FaceWorker, batch_size=1, **pools["faces"].args(tasks_per_actor=1),
                        fn_constructor_kwargs=dict(plan=plan, device=device, emotions=settings,
                                                   threads=pools["faces"].threads, crops=crops))
    # S2D actors: probabilities, ``batch`` clips per forward
    batch = settings.batch_size or (8 if device == "cuda" else 1)
    video, image = labellings["video"], labellings["image"]
    return ds.map_batches(S2DWorker, batch_size=max(8, batch), **pools["s2d"].args(),  # >= 8 rows per task
                          fn_constructor_kwargs=dict(classifier=video and video.classifier,
                                                     image=image and image.classifier, device=device,
                                                     batch_size=batch, threads=pools["s2d"].threads))


# 3. the collector -----------------------------------------------------------------------------------------------

def video_segment(s, tracks: dict[int, int], offset: int):
    """A unit's segment in its video's terms: the video's track id and frame indices."""
    return dataclasses.replace(s, track_id=tracks[s.track_id], frame_index=s.frame_index + offset)


def clip_key(s) -> str:
    """"track:segment:view", a clip's name within its unit."""
    return f"{s.track_id}:{s.segment}:{s.view}"


class Timelines:
    """The driver's part: collects each video's units and classified clips, in whatever order they come; when all
    are in, writes the video's cache entry (unless it came from the cache) and its timeline, and returns its record.
    Items of a video already finished (a retried task sends them again) are ignored."""

    def __init__(self, sources: dict[str, Source], plan: FacePlan, cache_dir, out_dir,
                 labellings: dict[str, Labelling | None], entries: dict[str, tuple],
                 result: AnnotateResult | None = None, t0: float | None = None):
        """``entries``: {video id: (rows, meta)} of the videos with a complete cache entry; ``result``: the run's,
        whose counts and times (from ``t0``, the run's start) it keeps."""
        self.sources, self.plan, self.cache_dir, self.out_dir = sources, plan, cache_dir, out_dir
        self.labellings, self.entries = labellings, entries
        self.result = result or AnnotateResult(out_dir, "", cache_dir)
        self.t0 = time.perf_counter() if t0 is None else t0
        self.units: dict[str, dict[int, UnitFaces]] = {}
        self.clips: dict[str, dict[tuple, Clip]] = {}
        self.face_metas: dict[str, dict] = {}
        self.finished: set[str] = set()
        self.ray_up = time.time()
        self.result.faces = FacesResult(cache_dir, plan.key, cached=len(entries))

    def connected(self) -> None:
        self.ray_up = time.time()

    def videos(self, left: dict[str, Source]) -> list[Video]:
        """The chain's input: the videos left, with their cache entry's rows where they have one."""
        return [Video(vid, s.path, self.entries[vid][0] if vid in self.entries else None) for vid, s in left.items()]

    def forget(self, video_ids) -> None:
        for vid in video_ids:
            self.units.pop(vid, None)
            self.clips.pop(vid, None)
            self.finished.discard(vid)

    def add(self, item: Clip | UnitFaces) -> Done | None:
        vid = item.video_id
        if vid in self.finished:
            return None
        if isinstance(item, UnitFaces):
            self.units.setdefault(vid, {})[item.index] = item
            if item.first_face_at is not None:
                first = item.first_face_at - self.ray_up
                self.result.first_face_seconds = min(first, self.result.first_face_seconds or first)
        else:
            self.clips.setdefault(vid, {})[(item.unit, clip_key(item.segment))] = item
            self.result.clips += 1
            self.result.s2d_seconds += item.s2d_seconds
        units = self.units.get(vid, {})
        if not units or len(units) < next(iter(units.values())).count:
            return None
        if len(self.clips.get(vid, {})) < sum(u.n_clips for u in units.values()):
            return None
        self.finished.add(vid)
        try:
            rec = self.finish(vid, [units[i] for i in range(len(units))], list(self.clips.pop(vid, {}).values()))
        except storage.NoSpace:  # the run stops (one line): no other video could be written either
            raise
        except Exception as exc:  # this video's outputs could not be written: its own error row, the run goes on
            rec = self.failed(vid, f"writing its outputs: {type(exc).__name__}: {exc}")
        self.result.faces.decoded += vid not in self.entries
        self.result.faces.wall_seconds = time.perf_counter() - self.t0
        if rec.timeline and self.result.first_timeline_seconds is None:
            self.result.first_timeline_seconds = time.perf_counter() - self.t0
        return Done(vid, rec, storage.name(rec.video_path), rec.status, self.face_metas[vid].get("duration_s"))

    def finish(self, vid: str, units: list[UnitFaces], clips: list[Clip]) -> VideoRecord:
        """A video's cache entry (unless it came from the cache), then its timeline -> its record."""
        src = self.sources[vid]
        del self.units[vid]
        error = next((u.error for u in units if u.status == "error"), None)
        if vid in self.entries:  # faces from the cache entry: its track ids are the video's
            rows, meta = self.entries[vid]
            meta = meta if error is None else error_meta(src, self.plan.record, error)
            maps, persons = None, dict(zip(rows.column("track_id").to_pylist(), rows.column("person_id").to_pylist()))
        else:
            meta, maps, persons = write_units(self.cache_dir, self.plan, src, units)
        self.face_metas[vid] = meta
        rec = VideoRecord(vid, src.path, kind(src), meta["status"], meta["error"], meta.get("duration_s"),
                          nodes={"faces": sorted({u.node for u in units} - {""}),
                                 "s2d": sorted({c.node for c in clips} - {""})})
        if meta["status"] == "error":
            return rec
        bad = [c for c in clips if c.probs is None or not np.isfinite(c.probs).all()]
        if bad:  # never a timeline row without a real probability
            return dataclasses.replace(rec, status="error",
                                       error=f"S2D: {len(bad)} of {len(clips)} clips were not classified")
        segments = [(c.segment if maps is None else video_segment(c.segment, *maps[c.unit]), c.probs) for c in clips]
        lab = self.labellings[kind(src)]
        status = "ok" if segments else meta["status"]
        table = windows_table(vid, src.path, segments, lab.classifier.class_names, lab.model, lab.key, status,
                              video_thumbnails(units, None if maps is None else [m for m, _ in maps]),
                              lab.classifier.input, persons, lab.base)
        path = write_timeline(table, timeline_path(self.out_dir, vid, src.path))
        return dataclasses.replace(record(src, path, status, table), error=rec.error, duration_s=rec.duration_s,
                                   nodes=rec.nodes)

    def failed(self, vid: str, message: str) -> VideoRecord:
        src = self.sources[vid]
        self.face_metas[vid] = error_meta(src, self.plan.record, message)
        return VideoRecord(vid, src.path, kind(src), "error", message)

    def left_over(self, src: Source, status: str, message: str) -> VideoRecord:
        if status == "interrupted" and src.video_id in self.finished:  # its timeline was written as it came
            rec = kept(src, self.out_dir, self.labellings, skipped=False)
            if rec is not None:
                return rec
        return VideoRecord(src.video_id, src.path, kind(src), status, message)


# 4. the writers -------------------------------------------------------------------------------------------------

def write_overlays(result: AnnotateResult, progress: bool) -> None:
    """``s2d overlay`` for every video of the run with faces, into ``OUT/overlays/``; one that is newer than its
    timeline is kept. Each record gets ``overlay`` (its path) or ``overlay_error`` (why not)."""
    from .overlay import overlay_path, write_overlay

    todo = [r for r in result.records if r.kind == "video" and r.status == "ok"]
    with Progress(len(todo), "overlays", progress) as bar:
        for r in todo:
            path = overlay_path(result.out_dir, r.video_id, r.video_path)
            try:
                if not (storage.is_file(path) and storage.info(path).mtime >= storage.info(r.timeline).mtime):
                    write_overlay(result.out_dir, r.video_id, path)
                r.overlay, status = str(path), "ok"
            except storage.NoSpace:
                raise
            except Exception as exc:  # one video's overlay failing loses nothing else
                r.overlay_error, status = f"overlay: {type(exc).__name__}: {exc}", "error"
            bar.done(storage.name(r.video_path), status, r.duration_s)


def write_report(result: AnnotateResult, persons: float | None) -> None:
    """``OUT/people.parquet`` (the persons linked across the run's inputs by the identity threshold ``persons``;
    None: identities off, none) and ``OUT/report.html``, which shows them; if either cannot be written, the run's
    outputs stand and ``report_error`` says why."""
    from .people_link import write_people
    from .report import write_report as write

    errors = []
    if persons is not None:
        try:
            write_people(result.out_dir, persons)
        except storage.NoSpace:
            raise
        except Exception as exc:  # the report is written all the same
            errors.append(f"people: {type(exc).__name__}: {exc}")
    try:
        result.report = write(result.out_dir)
    except storage.NoSpace:
        raise
    except Exception as exc:
        errors.append(f"report: {type(exc).__name__}: {exc}")
    result.report_error = "; ".join(errors) or None
