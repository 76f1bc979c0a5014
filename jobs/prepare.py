"""``s2d prepare``: raw labelled videos -> a DFEW-style clip dataset (16 aligned 224 px frames per clip + CSV).

Input: a CSV with columns ``path,label`` and optionally ``split`` (``train``, ``val`` or ``test``; default
``train``). Paths are video files, relative to the CSV's folder or absolute. Labels are kept as written (an
int or a class name); with ``labels`` (a label-set name or comma-separated class names) they are checked first.

Per video:
1. the face stage (``pipeline.faces_run.run_faces``; its landmark cache under ``OUT/cache`` is reused on re-runs);
2. the track with the most sampled faces (ties: the larger mean box) is the clip's subject;
3. 16 target times spread uniformly over that track's span (first to last face time, plus one sampling
   step), ``t_j = t0 + (j + 0.5) * span / 16``, each taking the nearest frame of the track -- DFEW's clips are
   16 frames spread over the whole clip; a track shorter than 16 sampled frames repeats frames;
4. those frames are re-decoded and cut with the crop ``crop`` (``pipeline.crops``; default
   ``template:0.25@224``: 5-point similarity transform to the ArcFace template with margin 0.25, exactly as
   ``s2d annotate`` aligns its clips by default, so training and inference see the same crops);
5. written as ``OUT/clips/<name>/00001.jpg .. 00016.jpg`` (JPEG quality 95; ``<name>`` is the file's stem plus
   its ``video_id``) and ``clip.json`` (source, face-stage settings hash, crop, frames), into a temporary folder
   renamed when complete. ``OUT`` may be a URI (``s3://...``, ``pipeline.storage``): there a clip is complete
   when its ``clip.json`` (removed first, written last) names the current settings and crop.

Outputs: ``OUT/{train,val,test}.csv`` (``path,label``, paths relative to OUT: ``s2d train dynamic --data OUT
--format csv`` and ``s2d evaluate --format csv`` read them as they are), ``OUT/dataset.json`` (``{"crop": SPEC}``:
train records it in its checkpoints) and ``OUT/prepare.json`` (settings and per-video status: ``ok``,
``no_faces`` or ``error`` with the reason, the chosen track, its frames). Videos without a usable face are
reported and left out of the CSVs; the run goes on. A re-run keeps complete clip folders cut with the same
face-stage settings and crop (``force`` redoes them). Clip cutting runs in the driver: 16 frames per video, small
next to the face stage.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.crops import OUR_CROP, Crop, parse_crop

from .datasets import DatasetError, _csv_names, _read_table, parse_label

FRAMES = 16
SPLITS = ("train", "val", "test")
DEFAULT_CROP = str(OUR_CROP)  # pipeline.align's alignment: what prepare cut before crops were chosen


def read_videos_csv(path: str | Path, labels: str | None = None) -> list[dict]:
    """``path,label[,split]`` rows -> [{"path": absolute str, "label": str, "split": str, "line": int}].
    A bad label or split stops here, naming the row; a missing or unreadable video becomes an error row later."""
    path = storage.absolute(path)
    if not storage.is_file(path):
        raise DatasetError(f"videos CSV not found: {path} (expected columns path,label and optionally split)")
    names = _csv_names(labels)
    with io.StringIO(storage.read_text(path, "utf-8-sig"), newline="") as f:
        header = [h.strip().lower() for h in next(csv.reader(f), [])]
    columns = [("path", "file", "video"), ("label", "labels", "emotion")] + ([("split",)] if "split" in header else [])
    rows = []
    for line, values in _read_table(path, columns):
        rel, label = values[:2]
        where = f"{path}:{line}"
        video = storage.absolute(storage.beside(path, rel))
        if names is not None:
            parse_label(label, names, 0, where)  # unknown class names and out-of-range ints stop here
        split = (values[2] if len(values) > 2 and values[2] else "train").lower()
        if split not in SPLITS:
            raise DatasetError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
        rows.append({"path": str(video), "label": label, "split": split, "line": line})
    if not rows:
        raise DatasetError(f"{path}: no videos listed")
    return rows


def pick_track(faces) -> tuple[int, np.ndarray] | None:
    """The subject of a clip: (track_id, row indices sorted by time) of the track with the most faces, ties
    broken by the larger mean box area; None when there is no face."""
    track = faces.column("track_id").to_numpy()
    if len(track) == 0:
        return None
    box = faces.column("bbox").combine_chunks().flatten().to_numpy().reshape(-1, 4)
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    best = max(np.unique(track), key=lambda t: (int((track == t).sum()), float(area[track == t].mean()), -int(t)))
    rows = np.flatnonzero(track == best)
    return int(best), rows[np.argsort(faces.column("time_s").to_numpy()[rows], kind="stable")]


def clip_frames(times: np.ndarray, n: int = FRAMES) -> np.ndarray:
    """Sorted face times [m] -> n positions into them: the nearest to n targets spread over the span."""
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    span = float(times[-1] - times[0]) + step
    targets = times[0] + (np.arange(n) + 0.5) * span / n  # [n]
    return np.abs(times[None, :] - targets[:, None]).argmin(1)  # [n], ties: the earlier frame


def _clip_is_current(folder, settings_hash: str, crop: Crop) -> bool:
    """A complete clip folder cut from a face stage with the same settings, with the same crop (a ``clip.json``
    without one is from before crops were chosen: ``DEFAULT_CROP``)."""
    try:
        info = json.loads(storage.read_text(storage.join(folder, "clip.json")))
    except (OSError, ValueError):
        return False
    jpgs = [f for f in storage.files(folder, recursive=False) if f.path.endswith(".jpg")]
    return (info.get("faces_settings_hash") == settings_hash and info.get("crop", DEFAULT_CROP) == str(crop)
            and len(jpgs) == FRAMES)


def cut_clip(video: str, faces, rows: np.ndarray, folder, settings_hash: str, decoder: str = "pyav",
             crop: Crop | str = DEFAULT_CROP) -> dict:
    """Decode the clip's frames, cut ``crop`` from each and write ``folder/00001.jpg ..`` (+ ``clip.json``)
    atomically: a local folder is renamed into place whole; in an object store ``clip.json`` goes first and comes
    back last."""
    from PIL import Image

    from pipeline.decode import get_decoder

    crop = parse_crop(crop)
    times = faces.column("time_s").to_numpy()[rows]
    slots = clip_frames(times)  # [16] positions in the track
    pick = rows[slots]  # [16] face rows
    frame_index = faces.column("frame_index").to_numpy()[pick]
    bbox = faces.column("bbox").combine_chunks().flatten().to_numpy().reshape(-1, 4)[pick]
    kps5 = faces.column("kps5").combine_chunks().flatten().to_numpy().reshape(-1, 10)[pick]
    index, first = np.unique(frame_index, return_index=True)
    got = get_decoder(decoder).read_frames(video, index, times[slots][first])
    frames = dict(zip(got["frame_index"].tolist(), got["frames"]))
    missing = sorted(set(frame_index.tolist()) - set(frames))
    if missing:
        raise KeyError(f"frames {missing} are not among the decoded frames")
    clip = [crop.cut(frames[i], b, k) for i, b, k in zip(frame_index.tolist(), bbox, kps5)]  # 16 x [S, S, 3]
    info = {"video": video, "faces_settings_hash": settings_hash, "crop": str(crop),
            "frame_index": frame_index.tolist(), "time_s": [round(float(t), 4) for t in times[slots]]}
    jpgs = []
    for frame in clip:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=95)
        jpgs.append(buf.getvalue())
    if storage.is_uri(folder):
        storage.remove(storage.join(folder, "clip.json"))
        for j, data in enumerate(jpgs, start=1):
            storage.write(storage.join(folder, f"{j:05d}.jpg"), data)
        storage.write(storage.join(folder, "clip.json"), json.dumps(info))
        return {k: info[k] for k in ("frame_index", "time_s")}
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for j, data in enumerate(jpgs, start=1):
        (tmp / f"{j:05d}.jpg").write_bytes(data)
    (tmp / "clip.json").write_text(json.dumps(info))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return {k: info[k] for k in ("frame_index", "time_s")}


def prepare(videos_csv: str | Path, out: str | Path, faces=None, labels: str | None = None, device: str = "auto",
            address: str | None = None, force: bool = False, progress: bool = True, crop: str = DEFAULT_CROP) -> dict:
    """Build the clip dataset, each frame cut with ``crop`` (a ``pipeline.crops`` spec); -> the manifest (also
    written to ``OUT/prepare.json``)."""
    from pipeline.settings import FaceSettings

    t0 = time.perf_counter()
    faces = faces or FaceSettings(identities=False)  # (its longest track's clip: persons play no part)
    crop = parse_crop(crop)  # an unknown crop stops here, before any work
    rows = read_videos_csv(videos_csv, labels)  # a bad row stops here, before any work
    out = storage.absolute(out)
    storage.check_output(out)
    if not storage.is_uri(out):
        (out / "clips").mkdir(parents=True, exist_ok=True)
    sources, result = _face_stage(rows, out, faces, device, address, progress)
    videos, written, kept = _cut_clips(rows, sources, result, out, faces.decoder, crop, force, progress)
    csvs = _write_csvs(out, videos)
    storage.write(storage.join(out, "dataset.json"), json.dumps({"crop": str(crop)}))
    manifest = {"videos_csv": str(storage.absolute(videos_csv)), "out": str(out), "labels": labels,
                "crop": str(crop), "faces": asdict(faces), "faces_settings_hash": result.settings_hash, "csv": csvs,
                "clips_written": written, "clips_kept": kept, "faces_from_cache": result.cached,
                "wall_seconds": round(time.perf_counter() - t0, 2), "videos": videos}
    storage.write(storage.join(out, "prepare.json"), json.dumps(manifest, indent=1, default=str))
    return manifest


def _face_stage(rows: list[dict], out, faces, device: str, address: str | None, progress: bool):
    """The face stage on every listed video (each once), its cache under ``OUT/cache`` -> (a source per row, the
    run's result). KeyboardInterrupt when it was interrupted: no clips or CSVs from part of the videos."""
    from pipeline.faces_run import run_faces
    from pipeline.sources import make_source

    sources = [make_source(r["path"]) for r in rows]
    result = run_faces(list({s.video_id: s for s in sources}.values()), storage.join(out, "cache"), faces,
                       device=device, address=address, progress=progress)
    if result.interrupted:  # Ctrl-C or SIGTERM
        raise KeyboardInterrupt("the face stage was interrupted")
    return sources, result


def _cut_clips(rows: list[dict], sources: list, result, out, decoder: str, crop: Crop, force: bool,
               progress: bool) -> tuple[list[dict], int, int]:
    """A clip per video with faces (kept when current, unless ``force``) -> (manifest entries, written, kept)."""
    from tqdm import tqdm

    from pipeline import cache

    metas = {m["video_id"]: m for m in result.videos}
    videos, written, kept = [], 0, 0
    for row, src in tqdm(list(zip(rows, sources)), unit="clip", desc="clips", disable=not progress):
        meta = metas[src.video_id]
        name = f"{Path(src.path).stem}-{src.video_id}"
        entry = {"path": src.path, "label": row["label"], "split": row["split"], "video_id": src.video_id,
                 "clip": f"clips/{name}", "status": meta["status"], "error": meta.get("error")}
        videos.append(entry)
        if meta["status"] != "ok":
            continue
        table, _ = cache.read_entry(storage.join(out, "cache"), result.settings_hash, src.video_id)
        track_id, track_rows = pick_track(table)
        entry.update(track_id=track_id, track_faces=len(track_rows))
        folder = storage.join(out, "clips", name)
        if not force and _clip_is_current(folder, result.settings_hash, crop):
            kept += 1
            continue
        try:
            entry.update(cut_clip(src.path, table, track_rows, folder, result.settings_hash, decoder, crop))
            written += 1
        except Exception as exc:  # e.g. a seek error: this video is left out, the others go on
            entry.update(status="error", error=f"clips: {type(exc).__name__}: {exc}")
    return videos, written, kept


def _write_csvs(out, videos: list[dict]) -> dict:
    """``OUT/{split}.csv`` (``path,label``) of each split's ok clips; a split without any loses its old CSV.
    -> {split: {"file", "clips"}}."""
    csvs = {}
    for split in SPLITS:
        ok = [v for v in videos if v["split"] == split and v["status"] == "ok"]
        target = storage.join(out, f"{split}.csv")
        if not ok:
            storage.remove(target)
            continue
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(["path", "label"])
        w.writerows([v["clip"], v["label"]] for v in ok)
        storage.write(target, text.getvalue())
        csvs[split] = {"file": str(target), "clips": len(ok)}
    return csvs
