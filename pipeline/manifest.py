"""``OUT/manifest.json``: a run's settings, weights, versions, timings, and one ``VideoRecord`` per input. The paths it
holds of files inside the run folder (timelines, overlays, the default cache) are relative to the folder, so that a
run folder can be moved or copied (``timeline.in_run`` reads them back)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from . import cache, storage
from .settings import AnnotateSettings, FaceSettings


@dataclass
class VideoRecord:
    """One input's outcome: what the manifest's "videos" rows hold, and the report, API and CLI read."""

    video_id: str
    video_path: str
    kind: str  # "video" or "image"
    status: str  # "ok", "no_faces", "error" or "interrupted"
    error: str | None = None
    duration_s: float | None = None
    timeline: str | None = None  # its timeline file, once written
    n_segments: int = 0
    n_tracks: int = 0
    n_persons: int = 0  # the people its tracks were grouped into (with identities off: one per track)
    nodes: dict | None = None  # {"faces": [...], "s2d": [...]}: the Ray node ids that did its work in this run
    skipped: bool = False  # its complete timeline was kept from an earlier run
    overlay: str | None = None  # its overlay video (--overlay)
    overlay_error: str | None = None  # why it has none


def relative(out_dir, path) -> str | None:
    """``path`` relative to the run folder ``out_dir`` when it lies inside it; else as it is (absolute, or a URI)."""
    if path is None:
        return None
    base, p = str(storage.absolute(out_dir)).rstrip("/") + "/", str(storage.absolute(path))
    return p[len(base):] if p.startswith(base) else p


def write_manifest(result, face_key: str, settings: AnnotateSettings, faces: FaceSettings,
                   labellings: dict) -> Path | str:
    """``<out>/manifest.json``: settings, weights, versions, per-input records and timings (atomic). ``weights``,
    ``labels``: the video model's (the image model's when the run has no video); ``image_*``: the image model's,
    when the run has images. ``result``: an ``AnnotateResult``; ``labellings``: its ``Labelling`` of each kind."""
    main, image = labellings["video"] or labellings["image"], labellings["image"]
    manifest = {"settings_hash": result.settings_hash, "settings": asdict(settings), "face_settings": asdict(faces),
                "identities": {"on": faces.identities, "threshold": faces.identity_threshold if faces.identities
                               else None, "weights": result.identity_weights},
                "face_settings_hash": face_key, "cache_dir": relative(result.out_dir, result.cache_dir),
                "weights": main.classifier.fingerprint, "labels": list(main.classifier.class_names),
                "input": main.classifier.input, "image_weights": image.classifier.fingerprint if image else None,
                "image_input": image.classifier.input if image else None,
                "image_labels": list(image.classifier.class_names) if image else None,
                "image_settings_hash": image.key if image else None, "warning": result.warning,
                "versions": cache.library_versions(), "wall_seconds": result.wall_seconds,
                "clips_classified": result.clips, "s2d_seconds": result.s2d_seconds, "skipped": result.skipped,
                "videos": [asdict(replace(r, timeline=relative(result.out_dir, r.timeline),
                                          overlay=relative(result.out_dir, r.overlay))) for r in result.records],
                "faces_wall_seconds": result.faces.wall_seconds if result.faces else 0.0,
                "first_timeline_seconds": result.first_timeline_seconds,
                "first_face_seconds": result.first_face_seconds}
    return storage.write(storage.join(result.out_dir, "manifest.json"), json.dumps(manifest, indent=1, default=str))
