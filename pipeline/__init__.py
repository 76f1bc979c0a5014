"""The Python API: what ``s2d annotate`` and ``s2d faces`` run, returning pandas DataFrames.

    from pipeline import annotate, faces, people, read_timelines, read_faces

    df = annotate(["videos/"], out="runs/x", weights="s2d-dfew")  # one row per track and segment
    df.attrs["manifest"]  # the run's manifest.json: per video its status, error, tracks, timeline file
    rows = faces("videos/a.mp4", cache="runs/faces")  # one row per face found (the landmark cache)
    who = people("runs/x")  # per video and person its global_person_id across the run (runs/x/people.parquet)

Options are the fields of ``pipeline.settings.FaceSettings`` (``fps``, ``detector``, ``detector_weights``, ...)
and ``AnnotateSettings`` (``weights``, ``labels``, ``segment_s``, ``stride_s``, ...), by name. Paths and ``out``
may be URIs (``s3://...``). The heavy modules (Ray, torch) are imported on first call, not with the package.
"""
from __future__ import annotations

from dataclasses import fields, replace


def _paths(paths) -> list[str]:
    """One path or URI, or several."""
    return [str(p) for p in ([paths] if isinstance(paths, str) or hasattr(paths, "__fspath__") else paths)]


def _settings(options: dict, *kinds) -> list:
    """Split keyword options over the settings dataclasses by field name; TypeError naming unknown ones."""
    names = [{f.name for f in fields(k)} for k in kinds]
    unknown = set(options) - set().union(*names)
    if unknown:
        known = ", ".join(sorted(set().union(*names)))
        raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}; known: {known}")
    return [k(**{n: v for n, v in options.items() if n in these}) for k, these in zip(kinds, names)]


def annotate(paths, out, cache=None, *, device: str = "auto", address: str | None = None, force: bool = False,
             progress: bool = True, trust: bool = False, report: bool = True, overlay: bool = False, **options):
    """Videos and images (files, folders or URIs) -> their emotion timelines under ``out`` (as ``s2d annotate``
    writes them, ``report.html`` and, with ``overlay``, the overlay videos too), returned as one DataFrame of the
    timeline rows of these inputs; ``df.attrs["manifest"]`` is the manifest."""
    from .annotate_run import run_annotate
    from .settings import AnnotateSettings, FaceSettings
    from .timeline import read_manifest, read_timeline_files

    face_settings, settings = _settings(options, FaceSettings, AnnotateSettings)
    if settings.s2d_landmark_weights is None and face_settings.landmarks == "mobilefacenet":  # as the CLI does:
        settings = replace(settings, s2d_landmark_weights=face_settings.landmark_weights)  # one MobileFaceNet file
    result = run_annotate(_paths(paths), out, cache, face_settings, settings, device=device, address=address, force=force,
                          progress=progress, trust=trust, report=report, overlay=overlay)
    df = read_timeline_files([r.timeline for r in result.records if r.timeline])
    df.attrs["manifest"] = read_manifest(out)
    return df


def faces(paths, cache, *, device: str = "auto", address: str | None = None, progress: bool = True, **options):
    """Videos and images -> their landmark-cache entries under ``cache`` (as ``s2d faces`` writes them), returned
    as one DataFrame of the face rows of these inputs (bbox, kps5, landmarks68: numpy arrays per row);
    ``df.attrs["videos"]`` is each video's status and error."""
    from . import cache as cache_files
    from .faces_run import run_faces
    from .settings import FaceSettings

    (settings,) = _settings(options, FaceSettings)
    result = run_faces(_paths(paths), cache, settings, device=device, address=address, progress=progress)
    ok = [v["video_id"] for v in result.videos if v["status"] == "ok"]
    df = cache_files.read_faces(cache, result.settings_hash, ok)
    df.attrs["videos"] = result.videos
    return df


def read_timelines(out):
    """Every finished timeline under an ``s2d annotate --out`` folder (or URI), as one DataFrame."""
    from .timeline import read_timelines as read

    return read(out)


def people(out, threshold: float | None = None):
    """The persons of an ``s2d annotate --out`` folder linked across its videos and images (as ``s2d people``):
    one row per video and person with its ``global_person_id``, written to ``out/people.parquet`` too.
    ``threshold``: the descriptor distance below which persons are one (default: the run's identity threshold)."""
    from . import storage
    from .people_link import write_people

    return storage.read_table(write_people(out, threshold)).to_pandas()


def read_faces(cache, settings_hash: str | None = None, video_ids: list[str] | None = None):
    """The face rows of a landmark cache (``settings_hash`` may be left out when it holds one settings folder)."""
    from .cache import read_faces as read

    return read(cache, settings_hash, video_ids)

