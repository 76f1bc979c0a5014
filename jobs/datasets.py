"""Labelled datasets in their public layouts -> lists of samples -> Ray Datasets of decoded, augmented clips.

A sample is a plain dict ``{"path": str, "label": int, "kind": "frames" | "video" | "image"}``: a folder of
frame images, a video file (decoded with PyAV), or one image. Labels are 0-based in the label order of
``s2d_model.LABEL_SETS`` (``../shared/S2D_REFERENCE.md`` section 4).

Formats (``load_split(data, format, split, fold)``; ``data`` is the dataset's root folder):

| format | annotation read | samples |
|---|---|---|
| ``dfew`` | ``EmoLabel_DataSplit/{train,test}(single-labeled)/set_K.csv`` (DFEW's own files: ``video_name,label``, labels **1..7**) or the authors' ``{train,test}_set_K.csv`` (same columns, labels **0..6**) | ``clip_224x224_16f/<video_name>/`` (also under ``Clip/``) |
| ``ferv39k`` | ``Annotation/{train,test}.csv``: ``path,id``, 0-based, e.g. ``Crime/Angry/0063,0`` | ``2_ClipsforFaceCrop/<Scene>/<Emotion>/<id>/`` (or ``<root>/<path>``) |
| ``mafw`` | ``anno/single/no_caption/set_K/{train,test}.csv``: ``video_name,labels``, 0-based (the authors' files; ``.txt`` files ``03747.mp4 anger`` also read) | ``data/frames/frames_crop_align_224/<video_name>/`` (or ``frames_crop_align_224/``, ``frames/``) |
| ``rafdb`` | ``EmoLabel/list_patition_label.txt``: ``train_00001.jpg 5``, labels **1..7** | ``Image/aligned/train_00001_aligned.jpg`` (else ``Image/original/``) |
| ``affectnet7`` / ``affectnet8`` | ``Manually_Annotated_file_lists/{training,validation}.csv`` (``subDirectory_filePath``, ``expression``; codes >= 7 or 8 -- contempt for 7 classes, none, uncertain, no-face -- are skipped) or ``{train,test}.csv`` with ``path,label`` | ``Manually_Annotated_Images/<subDirectory_filePath>`` |
| ``csv`` | ``<data>/{train,val,test}.csv`` or ``data`` itself a CSV: ``path,label`` (label an int or a class name) | a frame folder, a video file or an image per row, relative to the CSV's folder |

DFEW label base: DFEW's own ``set_K.csv`` count from 1 (1 Happy ... 7 Fear); the authors of S2D renamed
them ``train_set_K.csv`` / ``test_set_K.csv`` and subtracted 1 (their repository's copies hold 0..6). The
file name tells which, and a label out of range is an error that names the row.

Errors are ``DatasetError`` and name the file, the line and the offending value.

Ray Data: ``train_dataset`` (random 16-frame window + ``jobs.augment.ClipAugment``; optionally
oversampled) and ``eval_dataset`` (the two test views) turn a sample list into a ``ray.data.Dataset`` of
uint8 clips, decoded in ``map_batches`` tasks on CPU workers.

Frame order (``frame_order``, ``pipeline.crops.FRAME_ORDERS``): a frame folder's files are read in ``time``
order (natural sort: ``2.jpg`` before ``10.jpg``) or ``lexicographic`` order (plain name sort: ``1.jpg, 10.jpg ..
16.jpg, 2.jpg ..``), as the authors' reader does (``sorted(glob('*.jpg'))``; ``S2D_REFERENCE.md`` section 7).
Video files and images are always read in time order.

A ``csv`` dataset may carry ``dataset.json`` beside its CSVs (``s2d prepare`` writes it): ``{"crop": SPEC}``, the
face crop its clips were cut with (``pipeline.crops``); ``Split.crop`` holds it (None when unknown).
"""
from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import storage
from pipeline.crops import check_order, parse_crop
from pipeline.storage import exists, join
from s2d_model import LABEL_SETS

from .augment import ClipAugment, eval_windows, train_window

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
FORMATS = ("dfew", "ferv39k", "mafw", "rafdb", "affectnet7", "affectnet8", "csv")


class DatasetError(ValueError):
    """A dataset cannot be read: the message names the file, the line and the offending value."""


@dataclass
class Split:
    samples: list[dict]  # {"path": str, "label": int, "kind": "frames" | "video" | "image"}
    label_names: tuple[str, ...]
    label_set: str | None  # a LABEL_SETS name, None for a generic CSV with its own classes
    source: str  # the annotation file read
    crop: str | None = None  # the face crop of the clips (a pipeline.crops spec), where the dataset says

    @property
    def num_classes(self) -> int:
        return len(self.label_names)


# ============================================================================ helpers
def _natural_key(path) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", storage.name(path))]


def _suffix(path) -> str:
    return Path(storage.name(path)).suffix.lower()


def list_frames(folder, frame_order: str = "time") -> list:
    """The image files of a frame folder (a path or URI): ``time``: natural order (``2.jpg`` before ``10.jpg``);
    ``lexicographic``: sorted by name (``10.jpg`` before ``2.jpg``), as the authors' reader lists them."""
    found = [storage.location(f.path) for f in storage.files(folder, recursive=False)]
    images = [p for p in found if _suffix(p) in IMAGE_EXTS]
    return sorted(images, key=storage.name if check_order(frame_order) == "lexicographic" else _natural_key)


def kind_of(path) -> str:
    if storage.is_dir(path):
        return "frames"
    return "image" if _suffix(path) in IMAGE_EXTS else "video"


def _first_existing(*candidates):
    return next((c for c in candidates if exists(c)), None)


def _text(path) -> str:
    return storage.read_text(path, "utf-8-sig")


def _read_table(path, columns: list[tuple[str, ...]]) -> list[tuple[int, list[str]]]:
    """CSV rows as (line number, [value per requested column]); each column given by accepted names."""
    with io.StringIO(_text(path), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}: empty file (expected a header with {', '.join(c[0] for c in columns)})")
        lower = [h.strip().lower() for h in header]
        where = []
        for names in columns:
            i = next((lower.index(n) for n in names if n in lower), None)
            if i is None:
                raise DatasetError(f"{path}: no column {' or '.join(repr(n) for n in names)} in header {header}")
            where.append(i)
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not v.strip() for v in row):
                continue
            if len(row) <= max(where):
                raise DatasetError(f"{path}:{line}: expected {len(header)} columns, got {row}")
            rows.append((line, [row[i].strip() for i in where]))
    return rows


def parse_label(value: str, names: tuple[str, ...] | None, base: int, where: str) -> int:
    """An int (``base``-based) or a class name (case-insensitive) -> 0-based index, checked against ``names``."""
    value = value.strip()
    try:
        idx = int(value) - base
    except ValueError:
        if names is None:
            raise DatasetError(f"{where}: label {value!r} is a class name; pass the class names (labels=...) "
                               "to read named labels") from None
        lower = [n.lower() for n in names]
        if value.lower() not in lower:
            raise DatasetError(f"{where}: unknown label {value!r}; known: {', '.join(names)}") from None
        return lower.index(value.lower())
    if idx < 0 or (names is not None and idx >= len(names)):
        hi = (len(names) - 1 + base) if names is not None else "?"
        raise DatasetError(f"{where}: label {value} out of range (expected {base}..{hi})")
    return idx


def _need(path, where: str, what: str):
    if not exists(path):
        raise DatasetError(f"{where}: {what} not found: {path}")
    return path


def _nonempty(samples: list[dict], source: Path | str, split: str) -> list[dict]:
    if not samples:
        raise DatasetError(f"{source}: no samples for split '{split}'")
    return samples


# ============================================================================ readers
def read_dfew(root: Path, split: str, fold: int | None) -> Split:
    if fold is None:
        raise DatasetError(f"{root}: DFEW needs a fold (1..5)")
    clips = _first_existing(join(root, "clip_224x224_16f"), join(root, "Clip", "clip_224x224_16f"))
    if clips is None:
        raise DatasetError(f"{root}: no clip_224x224_16f/ folder (DFEW's 16-frame face clips) under the root")
    folder = join(root, "EmoLabel_DataSplit", f"{split}(single-labeled)")
    own, authors = join(folder, f"set_{fold}.csv"), join(folder, f"{split}_set_{fold}.csv")
    anno = _first_existing(own, authors)
    if anno is None:
        raise DatasetError(f"DFEW annotation not found: {own} (DFEW's file) or {authors} (the S2D authors' copy)")
    base = 1 if anno == own else 0  # DFEW's own files count from 1; the authors' copies from 0
    names = LABEL_SETS["dfew"]
    samples = []
    for line, (name, label) in _read_table(anno, [("video_name", "video", "name"), ("label", "labels")]):
        where = f"{anno}:{line}"
        path = join(clips, name)
        if not storage.is_dir(path) and name.isdigit():
            path = join(clips, name.zfill(5))
        samples.append({"path": str(_need(path, where, "clip folder")), "kind": "frames",
                        "label": parse_label(label, names, base, where)})
    return Split(_nonempty(samples, anno, split), names, "dfew", str(anno))


def read_ferv39k(root: Path, split: str) -> Split:
    anno = _first_existing(join(root, "Annotation", f"{split}.csv"), join(root, f"{split}.csv"))
    if anno is None:
        raise DatasetError(f"FERV39K annotation not found: {join(root, 'Annotation', f'{split}.csv')}")
    names = LABEL_SETS["ferv39k"]
    frame_roots = [join(root, "2_ClipsforFaceCrop"), root]
    samples = []
    for line, (rel, label) in _read_table(anno, [("path",), ("id", "label")]):
        where = f"{anno}:{line}"
        idx = parse_label(label, names, 0, where)
        folder = Path(rel).parts[-2].lower() if len(Path(rel).parts) >= 2 else None  # <Scene>/<Emotion>/<id>
        if folder in [n.lower() for n in names] and folder != names[idx].lower():
            raise DatasetError(f"{where}: label {label} ({names[idx]}) contradicts the path's emotion folder {rel!r}")
        path = next((join(r, rel) for r in frame_roots if exists(join(r, rel))), join(frame_roots[0], rel))
        samples.append({"path": str(_need(path, where, "clip folder")), "kind": kind_of(path), "label": idx})
    return Split(_nonempty(samples, anno, split), names, "ferv39k", str(anno))


def read_mafw(root: Path, split: str, fold: int | None) -> Split:
    folder = join(root, "anno", "single", "no_caption")
    folder = join(folder, f"set_{fold}") if fold is not None else folder
    anno = _first_existing(join(folder, f"{split}.csv"), join(folder, f"{split}.txt"))
    if anno is None:
        raise DatasetError(f"MAFW annotation not found: {join(folder, f'{split}.csv')}")
    names = LABEL_SETS["mafw"]
    frame_roots = [join(root, "data", "frames", "frames_crop_align_224"), join(root, "frames_crop_align_224"),
                   join(root, "frames"), join(root, "data", "clips"), root]
    if _suffix(anno) == ".txt":  # "03747.mp4 anger"
        rows = [(i, line.split()) for i, line in enumerate(_text(anno).splitlines(), start=1) if line.strip()]
    else:
        rows = _read_table(anno, [("video_name", "name", "path"), ("labels", "label")])
    samples = []
    for line, row in rows:
        where = f"{anno}:{line}"
        if len(row) != 2:
            raise DatasetError(f"{where}: expected 'name label', got {row}")
        name, label = row
        stem = name[: -len(Path(name).suffix)] if Path(name).suffix else name
        path = next((p for r in frame_roots for p in (join(r, stem), join(r, name)) if exists(p)), join(frame_roots[0], stem))
        samples.append({"path": str(_need(path, where, "clip folder or video")), "kind": kind_of(path),
                        "label": parse_label(label, names, 0, where)})
    return Split(_nonempty(samples, anno, split), names, "mafw", str(anno))


def read_rafdb(root: Path, split: str) -> Split:
    anno = _first_existing(*(join(d, f) for d in (join(root, "EmoLabel"), root)
                             for f in ("list_patition_label.txt", "list_partition_label.txt")))
    if anno is None:
        raise DatasetError(f"RAF-DB label file not found: {join(root, 'EmoLabel', 'list_patition_label.txt')}")
    names = LABEL_SETS["rafdb"]
    samples = []
    for line, text in enumerate(_text(anno).splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{anno}:{line}"
        parts = text.split()
        if len(parts) != 2:
            raise DatasetError(f"{where}: expected 'name label', got {text!r}")
        name, label = parts
        if not name.startswith(f"{split}_"):
            continue
        stem = Path(name).stem
        path = _first_existing(join(root, "Image", "aligned", f"{stem}_aligned.jpg"),
                               join(root, "Image", "original", name), join(root, "aligned", f"{stem}_aligned.jpg"),
                               join(root, name))
        if path is None:
            raise DatasetError(f"{where}: image not found: {join(root, 'Image', 'aligned', f'{stem}_aligned.jpg')}")
        samples.append({"path": str(path), "kind": "image", "label": parse_label(label, names, 1, where)})
    return Split(_nonempty(samples, anno, split), names, "rafdb", str(anno))


def read_affectnet(root: Path, split: str, num_classes: int) -> Split:
    official = {"train": "training.csv", "test": "validation.csv", "val": "validation.csv"}[split]
    anno = _first_existing(join(root, "Manually_Annotated_file_lists", official), join(root, official),
                           join(root, f"{split}.csv"))
    if anno is None:
        raise DatasetError(f"AffectNet annotation not found: {join(root, 'Manually_Annotated_file_lists', official)}")
    name = f"affectnet{num_classes}"
    names = LABEL_SETS[name]
    image_root = _first_existing(join(root, "Manually_Annotated_Images"),
                                 join(root, "Manually_Annotated", "Manually_Annotated_Images")) or root
    samples, skipped = [], 0
    for line, (rel, label) in _read_table(anno, [("subdirectory_filepath", "path"), ("expression", "label")]):
        where = f"{anno}:{line}"
        try:
            code = int(label)
        except ValueError:
            code = parse_label(label, names, 0, where)
        if code < 0 or code > 10:
            raise DatasetError(f"{where}: AffectNet expression code {label} out of range 0..10")
        if code >= num_classes:  # contempt (7-class), none, uncertain, no-face
            skipped += 1
            continue
        samples.append({"path": str(_need(join(image_root, rel), where, "image")), "kind": "image", "label": code})
    if skipped:
        print(f"{anno}: skipped {skipped} rows with expression codes >= {num_classes}")
    return Split(_nonempty(samples, anno, split), names, name, str(anno))


def _csv_names(labels: str | None) -> tuple[str, ...] | None:
    if labels is None:
        return None
    if labels.lower() in LABEL_SETS:
        return LABEL_SETS[labels.lower()]
    return tuple(n.strip() for n in labels.split(",") if n.strip())


def read_csv(data, split: str, labels: str | None = None) -> Split:
    """Generic ``path,label`` CSV. ``labels``: a LABEL_SETS name or comma-separated class names; without
    it labels must be ints and the classes are 0..max over the folder's CSV files."""
    single = storage.is_file(data)
    anno = data if single else join(data, f"{split}.csv")
    if not storage.is_file(anno):
        raise DatasetError(f"CSV annotation not found: {anno} (expected {data}/{{train,test}}.csv with path,label)")
    names = _csv_names(labels)
    rows = _read_table(anno, [("path", "file", "video"), ("label", "labels", "emotion")])
    if names is None:
        siblings = [anno] if single else [p for p in (join(data, f"{s}.csv") for s in ("train", "val", "test"))
                                          if storage.is_file(p)]
        top = -1
        for f in siblings:
            for line, (_, label) in (rows if f == anno else _read_table(f, [("path", "file", "video"),
                                                                          ("label", "labels", "emotion")])):
                top = max(top, parse_label(label, None, 0, f"{f}:{line}"))
        names = tuple(str(i) for i in range(top + 1))
    samples = []
    for line, (rel, label) in rows:
        where = f"{anno}:{line}"
        path = storage.beside(anno, rel)
        samples.append({"path": str(_need(path, where, "file or frame folder")), "kind": kind_of(path),
                        "label": parse_label(label, names, 0, where)})
    label_set = labels.lower() if labels and labels.lower() in LABEL_SETS else None
    return Split(_nonempty(samples, anno, split), names, label_set, str(anno), dataset_crop(storage.parent(anno)))


def dataset_crop(folder) -> str | None:
    """The crop a dataset folder's ``dataset.json`` names (``s2d prepare`` writes it), None without one."""
    path = join(folder, "dataset.json")
    if not storage.is_file(path):
        return None
    try:
        return str(parse_crop(json.loads(_text(path))["crop"]))
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: no valid crop ({e})") from None


def load_split(data: str | Path, format: str, split: str = "train", fold: int | None = None,
               labels: str | None = None) -> Split:
    """Read one split (``train`` or ``test``; ``val`` for formats that ship one) of a dataset."""
    # absolute sample paths (Ray workers run in other directories), or URIs
    root = storage.absolute(data)
    if not exists(root):
        raise DatasetError(f"dataset not found: {root}")
    fmt = format.lower()
    if fmt == "dfew":
        return read_dfew(root, split, fold)
    if fmt == "ferv39k":
        return read_ferv39k(root, split)
    if fmt == "mafw":
        return read_mafw(root, split, fold)
    if fmt == "rafdb":
        return read_rafdb(root, split)
    if fmt in ("affectnet7", "affectnet8"):
        return read_affectnet(root, split, int(fmt[-1]))
    if fmt == "csv":
        return read_csv(root, split, labels)
    raise DatasetError(f"unknown dataset format {format!r}: choose one of {', '.join(FORMATS)}")


# ============================================================================ splits and sampling
def stratified_split(samples: list[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Carve a validation split: per class, a seeded ``fraction`` (at least 1 when the class has >= 2 samples)."""
    if fraction <= 0:
        return list(samples), []
    rng = np.random.default_rng(seed)
    labels = np.array([s["label"] for s in samples])
    val_idx = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        k = int(round(fraction * len(idx)))
        k = min(max(k, 1), len(idx) - 1) if len(idx) >= 2 else 0
        val_idx.extend(idx[:k].tolist())
    chosen = set(val_idx)
    return [s for i, s in enumerate(samples) if i not in chosen], [samples[i] for i in sorted(chosen)]


def oversample_weights(labels) -> np.ndarray:
    """Per-sample draw probabilities proportional to 1 / count(class) (the oversampling variant)."""
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    return w / w.sum()


def draw_oversampled(batch: dict, *, paths, labels, kinds, probs) -> dict:
    """Ray Data map_batches fn: each input row (a draw slot of ``ray.data.range(N)``) becomes one sample
    drawn with replacement with probabilities ``probs``. Every pass over the dataset draws afresh, so every
    epoch sees a new weighted draw of len(dataset) samples."""
    rng = np.random.default_rng()
    pick = rng.choice(len(probs), size=len(batch["id"]), replace=True, p=probs)
    return {"path": paths[pick], "label": labels[pick], "kind": kinds[pick]}


# ============================================================================ decoding
def _image(path) -> np.ndarray:
    """An image file (a path or URI) as uint8 RGB [H, W, 3]."""
    with Image.open(io.BytesIO(storage.read_bytes(path)) if storage.is_uri(path) else path) as img:
        return np.asarray(img.convert("RGB"))


def read_clip(path: str, kind: str, pick, size: int = 224, frame_order: str = "time") -> np.ndarray:
    """Frames ``pick(n)`` (n = frame count) of a sample, each resized to size x size; a frame folder's files listed
    in ``frame_order``. -> uint8 [k, S, S, 3]."""
    from .augment import resize_frames

    try:
        if kind == "frames":
            files = list_frames(path, frame_order)
            if not files:
                raise DatasetError(f"{path}: frame folder holds no images")
            idx = np.asarray(pick(len(files)))
            cache = {i: resize_frames(_image(files[i])[None], size)[0] for i in np.unique(idx)}
            return np.stack([cache[i] for i in idx])
        if kind == "image":
            img = resize_frames(_image(path)[None], size)
            return img[np.asarray(pick(1))]
        if kind == "video":
            from pipeline.decode import DecodeError, get_decoder

            try:
                frames = [resize_frames(c["frames"], size) for c in get_decoder("pyav").iter_chunks(path, fps=None)]
            except DecodeError as e:
                raise DatasetError(f"{path}: cannot decode video ({e})") from None
            if not frames:
                raise DatasetError(f"{path}: video has no frames")
            frames = np.concatenate(frames)
            return frames[np.asarray(pick(len(frames)))]
    except (OSError, Image.UnidentifiedImageError) as e:
        raise DatasetError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    raise DatasetError(f"{path}: unknown sample kind {kind!r}")


def decode_train(batch: dict, *, num_frames: int, size: int, image_mode: bool, augment: bool,
                 frame_order: str = "time") -> dict:
    """Ray Data map_batches fn for training. -> {"clip": uint8 [B, T, S, S, 3] (T = 1 in image mode), "label"}."""
    rng = np.random.default_rng()
    aug = ClipAugment(size) if augment else None
    clips = []
    for path, kind in zip(batch["path"], batch["kind"]):
        if image_mode:  # [1, S, S, 3]
            frames = read_clip(str(path), str(kind), lambda n: [int(rng.integers(n))], size, frame_order)
        else:  # [T, S, S, 3]
            frames = read_clip(str(path), str(kind), lambda n: train_window(n, num_frames, rng), size, frame_order)
        clips.append(aug(frames, rng) if aug is not None else frames)
    return {"clip": np.stack(clips), "label": np.asarray(batch["label"], dtype=np.int64)}


def decode_eval(batch: dict, *, num_frames: int, size: int, image_mode: bool, frame_order: str = "time") -> dict:
    """Ray Data map_batches fn for val/test: the two temporal views (first and last ``num_frames``), a frame
    folder's files taken in ``frame_order``.

    -> {"clip": uint8 [B, V, T, S, S, 3] (V = 2; V = T = 1 in image mode), "views": 1 where both views are the
    same clip (n <= T frames) else 2, "label", "weight" (0 for padding rows), "index"}.
    """
    clips, views, count = [], [], {}

    def both(n):  # both views' frame indices; notes the clip's frame count
        count["n"] = n
        first, last = eval_windows(n, num_frames)
        return np.concatenate([first, last])

    for path, kind in zip(batch["path"], batch["kind"]):
        if image_mode:
            middle = read_clip(str(path), str(kind), lambda n: [n // 2], size, frame_order)  # [1, S, S, 3]
            clips.append(middle[None])
            views.append(1)
            continue
        frames = read_clip(str(path), str(kind), both, size, frame_order)  # [2T, S, S, 3]
        clips.append(frames.reshape(2, num_frames, *frames.shape[1:]))
        views.append(1 if count["n"] <= num_frames else 2)
    return {"clip": np.stack(clips), "views": np.asarray(views, dtype=np.int64),
            "label": np.asarray(batch["label"], dtype=np.int64),
            "weight": np.asarray(batch["weight"], dtype=np.float32),
            "index": np.asarray(batch["index"], dtype=np.int64)}


# ============================================================================ Ray Datasets
def train_dataset(samples: list[dict], *, num_frames: int = 16, size: int = 224, image_mode: bool = False,
                  augment: bool = True, oversample: bool = False, decode_batch_size: int = 4, num_cpus: float = 1.0,
                  frame_order: str = "time"):
    """A Ray Dataset of augmented training clips; reshuffled (or, with ``oversample``, redrawn) every pass.
    ``num_cpus``: what each of its tasks reserves (``cluster.data_task_cpus``); ``frame_order``: how a frame
    folder's files are ordered."""
    import ray

    if oversample:
        labels = np.array([s["label"] for s in samples], dtype=np.int64)
        ds = ray.data.range(len(samples)).map_batches(
            draw_oversampled, fn_kwargs=dict(paths=np.array([s["path"] for s in samples]), labels=labels,
                                             kinds=np.array([s["kind"] for s in samples]),
                                             probs=oversample_weights(labels)), num_cpus=num_cpus)
    else:
        ds = ray.data.from_items([{k: s[k] for k in ("path", "label", "kind")} for s in samples])
        ds = ds.random_shuffle(num_cpus=num_cpus)
    return ds.map_batches(decode_train, batch_size=decode_batch_size, num_cpus=num_cpus,
                          fn_kwargs=dict(num_frames=num_frames, size=size, image_mode=image_mode, augment=augment,
                                         frame_order=frame_order))


def eval_dataset(samples: list[dict], *, num_frames: int = 16, size: int = 224, image_mode: bool = False,
                 pad_to_multiple: int = 1, decode_batch_size: int = 4, num_cpus: float = 1.0,
                 frame_order: str = "time"):
    """A Ray Dataset of the test views, rows in sample order. Padding rows (``weight`` 0) bring the row
    count to a multiple of ``pad_to_multiple`` so an equal split over workers drops no real sample.
    ``num_cpus``: what each of its tasks reserves (``cluster.data_task_cpus``); ``frame_order``: how a frame
    folder's files are ordered."""
    import ray

    rows = [{"path": s["path"], "label": s["label"], "kind": s["kind"], "weight": 1.0, "index": i}
            for i, s in enumerate(samples)]
    pad = (-len(rows)) % pad_to_multiple
    rows += [{**rows[i % len(rows)], "weight": 0.0, "index": -1} for i in range(pad)]
    return ray.data.from_items(rows).map_batches(
        decode_eval, batch_size=decode_batch_size, num_cpus=num_cpus,
        fn_kwargs=dict(num_frames=num_frames, size=size, image_mode=image_mode, frame_order=frame_order))
