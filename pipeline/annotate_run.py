"""``run_annotate``: videos -> one emotion timeline Parquet per video (+ ``manifest.json``), one chain top to bottom.

    list, probe, cut long videos into time shards [driver]
         -> [face actors] decode -> detect -> landmarks -> track -> each window's aligned clip as the window closes
         -> [S2D actors] probabilities, ``batch_size`` clips at a time
         -> [driver] when a video's units and clips are all in: its cache entry, then its timeline (atomic)

Frames never leave the face actor that decoded them: what travels is uint8 clips and face rows. A video's clips
are classified while its later shards and the next videos are still being decoded. A video whose timeline is
complete for the same settings is skipped; one whose landmark-cache entry is complete is not detected again (its
clips are cut from the entry and a second decode). A still image is a unit of one frame whose faces go to S2D's
static image model (``--image-weights``): its timeline has one row per face (segment 0, start_s = end_s = 0).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from s2d_model.weights import resolve_all

from . import cache, storage
from .cluster import chain_context, init_ray, pick_device, plan_actors, resources, run_passes, stop_on_sigterm
from .emotions import Classifier, S2DWorker, is_faceapi, resolve_classifier
from .face_actor import FaceWorker
from .faces_run import FacesResult, Progress, Video, error_meta, unit_rows, write_units
from .images import is_image
from .settings import AnnotateSettings, FacePlan, FaceSettings, plan_faces, timeline_record
from .sources import Source, check_paths, find_videos
from .timeline import is_complete, timeline_path, windows_table, write_timeline
from .units import Clip, UnitFaces, video_thumbnails


@dataclass
class AnnotateResult:
    out_dir: Path | str  # a local folder, or a URI (s3://...)
    settings_hash: str
    cache_dir: Path | str | None = None  # the landmark cache it used
    videos: list[dict] = field(default_factory=list)  # per video: status, error, n_tracks, n_segments, timeline
    skipped: int = 0  # videos whose complete timeline was kept
    clips: int = 0  # clips classified in this run
    wall_seconds: float = 0.0
    s2d_seconds: float = 0.0  # time in the model (normalise + forward), summed over clips (lanes: over each lane)
    first_timeline_seconds: float | None = None  # when the first timeline file of this run was written
    first_face_seconds: float | None = None  # from Ray being up to the first face found (face actor's clock)
    faces: FacesResult | None = None  # the face stage's part (its wall_seconds: when the last video's faces were in)
    warning: str | None = None
    interrupted: bool = False  # Ctrl-C / SIGTERM: the videos not done are marked "interrupted"
    report: Path | str | None = None  # OUT/report.html, once written
    report_error: str | None = None  # why the report could not be written (the run's outputs stand)

    def count(self, status: str) -> int:
        return sum(v["status"] == status for v in self.videos)

    def summary(self) -> str:
        stop = f", {self.count('interrupted')} interrupted" if self.interrupted else ""
        return (f"videos: {self.count('ok')} ok, {self.count('no_faces')} no faces, {self.count('error')} failed{stop} "
                f"({self.skipped} already done); segments: {sum(v['n_segments'] for v in self.videos)}; "
                f"clips classified: {self.clips} in {self.wall_seconds:.1f} s")


@dataclass(frozen=True)
class Labelling:
    """How one kind of input (videos, or still images) is labelled: its classifier, the model name its timeline
    rows carry, and the settings hash that marks its timelines complete (of ``timeline_record``)."""

    classifier: Classifier
    model: str
    key: str


def labelling(classifier: Classifier, weights: str, face_key: str, settings: AnnotateSettings) -> Labelling:
    path = classifier.path
    model = weights if path is None or Path(weights).name != path.name else path.name
    key = cache.settings_hash(timeline_record(face_key, classifier.fingerprint, settings, classifier.input))
    return Labelling(classifier, model, key)


def kind(src: Source) -> str:
    return "image" if is_image(src.path) else "video"


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

    def __init__(self, sources: dict[str, Source], plan: FacePlan, cache_dir: Path, out_dir: Path,
                 labellings: dict[str, Labelling | None], entries: dict[str, dict]):
        self.sources, self.plan, self.cache_dir, self.out_dir = sources, plan, cache_dir, out_dir
        self.labellings, self.entries = labellings, entries
        self.units: dict[str, dict[int, UnitFaces]] = {}
        self.clips: dict[str, dict[tuple, Clip]] = {}
        self.face_metas: dict[str, dict] = {}
        self.finished: set[str] = set()

    def forget(self, vids) -> None:
        """Drop what came of these videos so far (a pass that broke off): they are done again from the start."""
        for vid in vids:
            self.units.pop(vid, None)
            self.clips.pop(vid, None)
            self.finished.discard(vid)

    def add(self, item: Clip | UnitFaces) -> dict | None:
        vid = item.video_id
        if vid in self.finished:
            return None
        if isinstance(item, UnitFaces):
            self.units.setdefault(vid, {})[item.index] = item
        else:
            self.clips.setdefault(vid, {})[(item.unit, clip_key(item.segment))] = item
        units = self.units.get(vid, {})
        if not units or len(units) < next(iter(units.values())).count:
            return None
        if len(self.clips.get(vid, {})) < sum(u.n_clips for u in units.values()):
            return None
        self.finished.add(vid)
        return self.finish(vid, [units[i] for i in range(len(units))], list(self.clips.pop(vid, {}).values()))

    def finish(self, vid: str, units: list[UnitFaces], clips: list[Clip]) -> dict:
        src = self.sources[vid]
        del self.units[vid]
        error = next((u.error for u in units if u.status == "error"), None)
        if vid in self.entries:  # faces from the cache entry: its track ids are the video's
            meta = self.entries[vid] if error is None else error_meta(src, self.plan.record, error)
            maps = None
        else:
            meta, maps = write_units(self.cache_dir, self.plan, src, units)
        self.face_metas[vid] = meta
        record = {"video_id": vid, "video_path": src.path, "kind": kind(src), "status": meta["status"],
                  "error": meta["error"],
                  "duration_s": meta.get("duration_s"), "timeline": None, "n_segments": 0, "n_tracks": 0,
                  "nodes": {"faces": sorted({u.node for u in units} - {""}),  # Ray node ids that did its work
                            "s2d": sorted({c.node for c in clips} - {""})}}
        if meta["status"] == "error":
            return record
        bad = [c for c in clips if c.probs is None or not np.isfinite(c.probs).all()]
        if bad:  # never a timeline row without a real probability
            return {**record, "status": "error", "error": f"S2D: {len(bad)} of {len(clips)} clips were not classified"}
        segments = [(c.segment if maps is None else video_segment(c.segment, *maps[c.unit]), c.probs) for c in clips]
        lab = self.labellings[kind(src)]
        table = windows_table(vid, src.path, segments, lab.classifier.class_names, lab.model, lab.key,
                              "ok" if segments else meta["status"],
                              video_thumbnails(units, None if maps is None else [m for m, _ in maps]),
                              lab.classifier.input)
        path = write_timeline(table, timeline_path(self.out_dir, vid, src.path))
        return {**record, "status": "ok" if segments else meta["status"], "timeline": str(path),
                "n_segments": table.num_rows, "n_tracks": len(set(table.column("track_id").to_pylist()))}


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
    # 0. everything that can fail for lack of a file fails now, before any work (every missing file at once)
    check_paths(paths, out_dir, cache_dir)
    sources = find_videos(paths)
    kinds = {kind(s) for s in sources}  # the weights of a kind the run has none of are not needed
    weights = {"video": settings.weights, "image": settings.image_weights}
    resolve_all(list(dict.fromkeys([
        faces.detector_weights or faces.detector,
        (faces.landmark_weights or "mobilefacenet") if faces.landmarks == "mobilefacenet" else None,
        # S2D's landmark branch (face-api's net has none)
        (settings.s2d_landmark_weights or "mobilefacenet") if not all(is_faceapi(weights[k]) for k in kinds) else None,
        *[weights[k] for k in sorted(kinds) if weights[k] != "random-tiny"]])))
    plan = plan_faces(faces)
    crops = {"video": settings.crop, "image": settings.image_crop}
    labellings = {k: labelling(resolve_classifier(weights[k], settings.labels if k == "video" else None,
                                                  settings.s2d_landmark_weights, trust, kind=k, crop=crops[k],
                                                  frame_order=settings.frame_order if k == "video" else None),
                               weights[k], plan.key, settings) if k in kinds else None for k in ("video", "image")}
    main = labellings["video"] or labellings["image"]
    warning = "; ".join(lab.classifier.warning for lab in labellings.values() if lab and lab.classifier.warning)
    result = AnnotateResult(out_dir, main.key, cache_dir, warning=warning or None)
    done: dict[str, dict] = {}

    def kept(s: Source, skipped: bool) -> dict | None:
        """The record of a video whose timeline is complete for these settings (None: it is not)."""
        path = timeline_path(out_dir, s.video_id, s.path)
        if (meta := is_complete(path, labellings[kind(s)].key)) is None:
            return None
        table = storage.read_table(path, columns=["track_id"])
        return {"video_id": s.video_id, "video_path": s.path, "kind": kind(s), "error": None,
                "status": meta["status"], "timeline": str(path), "n_segments": table.num_rows,
                "n_tracks": len(set(table.column("track_id").to_pylist())), "skipped": skipped}

    for s in sources:  # 1. complete timelines of the same settings are kept (unless --force)
        if not force and (rec := kept(s, True)) is not None:
            done[s.video_id] = rec
    result.skipped = len(done)
    todo = {s.video_id: s for s in sources if s.video_id not in done}

    if todo:
        entries = {vid: e for vid in todo if (e := cache.read_entry(cache_dir, plan.key, vid)) is not None}
        init_ray(address)
        chain_context()
        ray_up = time.time()
        device = pick_device(device)
        stop_on_sigterm()
        timelines = Timelines(todo, plan, cache_dir, out_dir, labellings, {vid: e[1] for vid, e in entries.items()})
        result.faces = FacesResult(cache_dir, plan.key, cached=len(entries))

        def run() -> object:  # one pass: the chain over what is not done
            left = {vid: s for vid, s in todo.items() if vid not in done}
            timelines.forget(left)  # what a broken pass left half-way is done again
            videos = [Video(vid, s.path, entries[vid][0] if vid in entries else None) for vid, s in left.items()]
            return chain(videos, plan, faces, settings, labellings, device)

        def take(item) -> None:
            rec = collect(item, timelines, result, ray_up)
            if rec is None:
                return
            done[rec["video_id"]] = rec
            result.faces.decoded += rec["video_id"] not in entries
            result.faces.wall_seconds = time.perf_counter() - t0
            if rec["timeline"] and result.first_timeline_seconds is None:
                result.first_timeline_seconds = time.perf_counter() - t0
            meta = timelines.face_metas.get(rec["video_id"]) or {}
            bar.done(storage.name(rec["video_path"]), rec["status"], meta.get("duration_s"))

        with Progress(len(todo), "videos", progress) as bar:
            ended = run_passes(run, take, lambda why: bar.note(
                f"{why}: {sum(v not in done for v in todo)} videos again, on the nodes left"))
        status, message = ended or ("error", "pipeline: the video never completed; run again")
        result.interrupted = status == "interrupted"
        for vid, s in todo.items():
            if vid in done:
                continue
            rec = kept(s, False) if result.interrupted and vid in timelines.finished else None  # written as it came
            done[vid] = rec or {"video_id": vid, "video_path": s.path, "kind": kind(s), "status": status,
                                "error": message, "timeline": None, "n_segments": 0, "n_tracks": 0}
        result.faces.videos = [timelines.face_metas.get(vid) or error_meta(s, plan.record, message)
                               for vid, s in todo.items()]
    result.videos = [done[s.video_id] for s in sources]
    result.wall_seconds = time.perf_counter() - t0
    write_manifest(result, plan.key, settings, faces, labellings)
    if overlay:  # from the outputs just written (the cache, the timelines, the manifest)
        write_overlays(result, progress)
        write_manifest(result, plan.key, settings, faces, labellings)  # with each video's overlay
    if report:
        from .report import write_report

        try:
            result.report = write_report(out_dir)
        except Exception as exc:  # the run's outputs are written and stand; the CLI says why the page is missing
            result.report_error = f"report: {type(exc).__name__}: {exc}"
    return result


def write_overlays(result: AnnotateResult, progress: bool) -> None:
    """``s2d overlay`` for every video of the run with faces, into ``OUT/overlays/``; one that is newer than its
    timeline is kept. Each record gets ``overlay`` (its path) or ``overlay_error`` (why not)."""
    from .overlay import overlay_path, write_overlay

    todo = [v for v in result.videos if v.get("kind") == "video" and v["status"] == "ok"]
    with Progress(len(todo), "overlays", progress) as bar:
        for v in todo:
            path = overlay_path(result.out_dir, v["video_id"], v["video_path"])
            try:
                if not (storage.is_file(path) and storage.info(path).mtime >= storage.info(v["timeline"]).mtime):
                    write_overlay(result.out_dir, v["video_id"], path)
                v["overlay"], status = str(path), "ok"
            except Exception as exc:  # one video's overlay failing loses nothing else
                v["overlay_error"], status = f"overlay: {type(exc).__name__}: {exc}", "error"
            bar.done(storage.name(v["video_path"]), status, v.get("duration_s"))


def chain(videos: list[Video], plan: FacePlan, faces: FaceSettings, settings: AnnotateSettings,
          labellings: dict[str, Labelling | None], device: str):
    """The Ray Data chain over ``videos``, its actor pools planned on the nodes alive now."""
    cpus, gpus, nodes = resources()
    pools = plan_actors(cpus, gpus if device == "cuda" else 0, nodes, emotions=True)
    # 1. units: the driver probes each video and cuts long ones into time shards
    ds = unit_rows(videos, faces, settings.segment_s, pools["faces"].size)
    # 2. face actors: decode -> detect -> landmarks -> track -> aligned clips as windows close (or the cache)
    ds = ds.map_batches(FaceWorker, batch_size=1, **pools["faces"].args(tasks_per_actor=1),
                        fn_constructor_kwargs=dict(plan=plan, device=device, emotions=settings,
                                                   threads=pools["faces"].threads,
                                                   crops={k: lab.classifier.crop for k, lab in labellings.items()
                                                          if lab is not None}))
    # 3. S2D actors: probabilities, batch clips per forward
    batch = settings.batch_size or (8 if device == "cuda" else 1)
    return ds.map_batches(S2DWorker, batch_size=max(8, batch), **pools["s2d"].args(),  # >= 8 rows per task
                          fn_constructor_kwargs=dict(classifier=labellings["video"] and labellings["video"].classifier,
                                                     image=labellings["image"] and labellings["image"].classifier,
                                                     device=device, batch_size=batch,
                                                     threads=pools["s2d"].threads))


def collect(item: Clip | UnitFaces, timelines: Timelines, result: AnnotateResult, ray_up: float) -> dict | None:
    """4. the driver: one item from the chain; a video's record once its last unit and clip are in (its cache
    entry and timeline written)."""
    if isinstance(item, Clip) and item.video_id not in timelines.finished:
        result.clips += 1
        result.s2d_seconds += item.s2d_seconds
    elif isinstance(item, UnitFaces) and item.first_face_at is not None:
        first = item.first_face_at - ray_up
        result.first_face_seconds = min(first, result.first_face_seconds or first)
    return timelines.add(item)


def write_manifest(result: AnnotateResult, face_key: str, settings: AnnotateSettings, faces: FaceSettings,
                   labellings: dict[str, Labelling | None]) -> Path | str:
    """``<out>/manifest.json``: settings, weights, versions, per-input status and timings (atomic). ``weights``,
    ``labels``: the video model's (the image model's when the run has no video); ``image_*``: the image model's,
    when the run has images."""
    main, image = labellings["video"] or labellings["image"], labellings["image"]
    manifest = {"settings_hash": result.settings_hash, "settings": asdict(settings), "face_settings": asdict(faces),
                "face_settings_hash": face_key, "cache_dir": str(result.cache_dir),
                "weights": main.classifier.fingerprint, "labels": list(main.classifier.class_names),
                "input": main.classifier.input, "image_weights": image.classifier.fingerprint if image else None,
                "image_input": image.classifier.input if image else None,
                "image_labels": list(image.classifier.class_names) if image else None,
                "image_settings_hash": image.key if image else None, "warning": result.warning,
                "versions": cache.library_versions(), "wall_seconds": result.wall_seconds,
                "clips_classified": result.clips, "s2d_seconds": result.s2d_seconds, "skipped": result.skipped,
                "videos": result.videos,
                "faces_wall_seconds": result.faces.wall_seconds if result.faces else 0.0,
                "first_timeline_seconds": result.first_timeline_seconds,
                "first_face_seconds": result.first_face_seconds}
    return storage.write(storage.join(result.out_dir, "manifest.json"), json.dumps(manifest, indent=1, default=str))
