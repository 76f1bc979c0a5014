"""The authors' test protocol and its metrics.

Protocol (``../shared/S2D_REFERENCE.md`` section 3): each test clip gives two temporal views, its first 16
frames and its last 16 (padded with the last frame when shorter; one view when the clip has <= 16 frames,
since both views are then the same), each frame resized to 224 x 224; the softmax outputs of the views are
averaged. Images (the static stage) are one view.

Metrics (pure numpy, C classes): confusion matrix (rows = true class, columns = predicted), UAR = mean
recall over the classes present in the ground truth, WAR = accuracy, per-class recall, F1 macro (over the
classes present in truth or predictions, as scikit-learn does) and weighted by support.

``evaluate(...)`` runs it on a dataset split with Ray Data (decoding in tasks, the model in an actor) and
writes ``metrics.json``, ``confusion.csv``, ``confusion.png`` and ``predictions.csv`` to ``out``.

Frame order (``frame_order``: ``auto``, ``time`` or ``lexicographic``; ``jobs/datasets.py``): how a frame folder's
files are ordered. ``auto`` is the order the checkpoint was trained on: for an authors' checkpoint given by its
registry name, ``s2d_model.weights.KNOWN[name].frame_order`` (s2d-dfew: lexicographic, which is how the authors
trained and tested it, ``S2D_REFERENCE.md`` section 7); for ours, the ``frame_order`` in its meta; else time.
``metrics.json`` records the order used and why (``frame_order``, ``frame_order_why``; None where the split holds
no frame folders).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

import s2d_model as S
from pipeline import storage
from pipeline.cluster import init_ray, resources
from pipeline.crops import FRAME_ORDERS
from pipeline.plans import data_task_cpus, plan_workers

from .augment import to_model_input


# ============================================================================ metrics (numpy)
def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """[C, C] int64 counts, rows = true class, columns = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray) -> dict:
    """UAR, WAR, per-class recall / precision / F1, macro and weighted F1 from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.float64)
    support = cm.sum(axis=1)  # true count per class
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, np.nan)  # nan: class absent from the ground truth
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + np.nan_to_num(recall) > 0,
                      2 * precision * np.nan_to_num(recall) / (precision + np.nan_to_num(recall)), 0.0)
    total = cm.sum()
    present = (support > 0) | (predicted > 0)
    return {
        "n": int(total),
        "uar": float(np.nanmean(recall)) if (support > 0).any() else float("nan"),
        "war": float(tp.sum() / total) if total else float("nan"),
        "recall": [None if np.isnan(r) else float(r) for r in recall],
        "precision": [float(p) for p in precision],
        "f1": [float(x) for x in f1],
        "f1_macro": float(f1[present].mean()) if present.any() else float("nan"),
        "f1_weighted": float((f1 * support).sum() / support.sum()) if support.sum() else float("nan"),
        "support": [int(s) for s in support],
    }


def compute_metrics(y_true, y_pred, num_classes: int) -> dict:
    cm = confusion_matrix(y_true, y_pred, num_classes)
    return {**metrics_from_confusion(cm), "confusion": cm.tolist()}


# ============================================================================ the two-view forward
@torch.no_grad()
def predict_views(model: torch.nn.Module, clips: torch.Tensor, views: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """Averaged softmax of the test views. clips uint8 [B, V, T, H, W, 3]; views [B] (1 or 2) -> probs [B, C].
    ``amp``: bf16 autocast on the model's device (a video model's landmark branch stays fp32 on a CPU).

    For an image model T = V = 1. Rows with ``views == 1`` use only their first view.
    """
    device = next(model.parameters()).device
    clips, views = clips.to(device), views.to(device)
    image = isinstance(model, S.S2DImage)

    def cast(on: bool):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)

    def softmax(x):  # uint8 [B, T, H, W, 3] -> [B, C]
        x = to_model_input(x)  # [B, 3, T, H, W]
        if image:
            with cast(amp):
                logits = model(x[:, :, 0])
        else:  # the frozen landmark branch in fp32 on a CPU, as the S2D actor runs it
            with cast(amp and device.type == "cuda"):
                landmark = model.landmark_features(x.transpose(1, 2).flatten(0, 1))
            with cast(amp):
                logits = model.forward_head(model.forward_features(x, landmark))[0]
        return logits.float().softmax(-1)

    probs = softmax(clips[:, 0])
    two = views > 1
    if two.any() and clips.shape[1] > 1:
        probs[two] = (probs[two] + softmax(clips[two, 1])) / 2
    return probs


# ============================================================================ the model actor
class Predictor:
    """Ray Data callable class: a batch of test views -> averaged softmax probabilities."""

    def __init__(self, checkpoint: str, landmark_weights: str, trust: bool = False,
                 precision: dict | None = None, gpu: bool = False):
        from s2d_model.weights import resolve

        self.model, _ = S.load_model(resolve(checkpoint), landmark_weights, trust)  # a URI: fetched on this node
        # a GPU only when the actor reserved one (``gpu``): Ray 2.60 shows every GPU to actors that did not ask
        device = "cuda" if gpu else "cpu"
        self.model.to(device)
        used = (precision or {"cpu": "fp32", "cuda": "bf16"})[device]
        if used == "int8":
            from pipeline.precision import quantize

            self.model = quantize(self.model)
        self.bf16 = used == "bf16"

    def __call__(self, batch: dict) -> dict:
        probs = predict_views(self.model, torch.tensor(batch["clip"]), torch.tensor(batch["views"]), amp=self.bf16)
        return {"probs": probs.cpu().numpy(), "label": batch["label"], "index": batch["index"],
                "weight": batch["weight"]}


# ============================================================================ outputs
def _csv_text(rows) -> str:
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    return text.getvalue()


def write_outputs(out, metrics: dict, label_names, samples=None, probs=None) -> dict:
    """metrics.json, confusion.csv, confusion.png (and predictions.csv) in ``out`` (a folder or URI), each written
    atomically; -> their paths."""
    cm = np.asarray(metrics["confusion"])
    paths = {k: storage.join(out, f) for k, f in (("metrics", "metrics.json"), ("confusion_csv", "confusion.csv"),
                                                   ("confusion_png", "confusion.png"))}
    storage.write(paths["metrics"], json.dumps({**metrics, "labels": list(label_names)}, indent=1))
    storage.write(paths["confusion_csv"], _csv_text([["true \\ predicted", *label_names],
                                                     *([name, *row.tolist()] for name, row in zip(label_names, cm))]))
    plot_confusion(cm, label_names, paths["confusion_png"],
                   title=f"UAR {100 * metrics['uar']:.2f}  WAR {100 * metrics['war']:.2f}  (n={metrics['n']})")
    if samples is not None and probs is not None:
        paths["predictions"] = storage.join(out, "predictions.csv")
        storage.write(paths["predictions"], _csv_text(
            [["path", "label", "pred", *[f"p_{n}" for n in label_names]],
             *([s["path"], s["label"], int(np.argmax(p)), *[f"{v:.6f}" for v in p]] for s, p in zip(samples, probs))]))
    return {k: str(v) for k, v in paths.items()}


def plot_confusion(cm: np.ndarray, label_names, path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)  # row-normalised (recall per cell)
    n = len(label_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * n, 0.8 + 0.7 * n))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), label_names, rotation=45, ha="right")
    ax.set_yticks(range(n), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{cm[i, j]}\n{100 * rows[i, j]:.0f}%", ha="center", va="center", fontsize=7,
                    color="white" if rows[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    storage.write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


# ============================================================================ the job
def check_frame_order(asked: str) -> str:
    """``--frame-order``: ``auto``, ``time`` or ``lexicographic``; ValueError in one line naming anything else."""
    if asked != "auto" and asked not in FRAME_ORDERS:
        raise ValueError(f"unknown frame order '{asked}': choose one of auto, {', '.join(FRAME_ORDERS)}")
    return asked


def pick_frame_order(asked: str, checkpoint: str, meta: dict) -> tuple[str, str]:
    """The frame order to read a checkpoint's test clips in, and why: ``asked`` (``auto``, ``time`` or
    ``lexicographic``), ``checkpoint`` as given (a registry name or a file), ``meta`` its ``s2d`` meta."""
    from s2d_model.weights import KNOWN

    check_frame_order(asked)
    spec = KNOWN.get(str(checkpoint))
    trained = spec.frame_order if spec is not None else meta.get("frame_order")
    if asked == "auto":
        if trained is None:
            return "time", "the checkpoint records no frame order"
        return trained, "the checkpoint's training order, " + ("the authors' protocol" if spec else "recorded in it")
    if trained is None:
        return asked, "as asked; the checkpoint records no frame order"
    if asked == trained:
        return asked, "as asked; the checkpoint's training order" + (", the authors' protocol" if spec else "")
    if spec is not None:
        return asked, (f"as asked; this differs from the authors' protocol: {spec.name} was trained and tested "
                       f"on {trained} order")
    return asked, f"as asked; the checkpoint was trained on {trained} order"


def evaluate(data: str | Path, format: str, checkpoint: str | Path, out: str | Path, fold: int | None = None,
             batch_size: int = 8, landmark_weights: str = "mobilefacenet", address: str | None = None,
             split: str = "test", labels: str | None = None, workers: int = 1, gpus_per_worker: float = 0,
             trust: bool = False, decode_batch_size: int = 4, frame_order: str = "auto",
             precision: str = "auto") -> dict:
    """Evaluate a checkpoint (ours or the authors', a path or a weights name) on a dataset split; ``frame_order``:
    see the module's docstring; ``precision``: as ``s2d annotate --precision`` (``pipeline.precision``).

    -> {"uar", "war", "f1_macro", "f1_weighted", "recall", "confusion", "frame_order", ..., "outputs": {file paths}}.
    """
    from s2d_model import weights as W

    from .datasets import eval_dataset, load_split

    from pipeline.precision import check_device, check_precision, describe, resolve_precision

    check_frame_order(frame_order)  # an unknown order stops here, before any work
    check_precision(precision)
    ckpt = W.resolve(str(checkpoint)).resolve()  # a URI: fetched into this machine's cache
    landmark = W.resolve(str(landmark_weights)).resolve()  # a missing file stops here, with the weights message
    model, report = S.load_model(ckpt, landmark, trust)  # validates the file before starting Ray work
    num_frames, num_classes, image_mode = model.num_frames or 1, model.num_classes, isinstance(model, S.S2DImage)
    used = resolve_precision(precision, report.meta["config"])
    check_device(used, "cuda" if gpus_per_worker else "cpu")
    print(f"precision: {describe(used)}")
    del model
    data_split = load_split(data, format, split, fold, labels)
    if num_classes != data_split.num_classes:
        raise ValueError(f"{ckpt}: the checkpoint has {num_classes} classes, the dataset "
                         f"{data_split.source} has {data_split.num_classes}")
    order, why = pick_frame_order(frame_order, checkpoint, report.meta)
    if not any(s["kind"] == "frames" for s in data_split.samples):
        order, why = None, "the split holds no frame folders"  # video files and images: time order, always
    else:
        print(f"frame order: {order} ({why})")

    import ray

    init_ray(address)
    cpus, gpus, _ = resources()
    each, note = plan_workers(workers, 1.0, gpus_per_worker, cpus, gpus)
    if note:
        print(note)
    ds = eval_dataset(data_split.samples, num_frames=num_frames, image_mode=image_mode,
                      decode_batch_size=decode_batch_size, num_cpus=data_task_cpus(cpus, workers, each),
                      frame_order=order or "time")
    given = str(checkpoint) if storage.is_uri(checkpoint) else str(ckpt)  # each node fetches a URI itself
    ds = ds.map_batches(Predictor, fn_constructor_kwargs=dict(checkpoint=given, landmark_weights=str(landmark),
                                                              trust=trust, precision=used,
                                                              gpu=bool(gpus_per_worker)),
                        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers),
                        num_cpus=each, num_gpus=gpus_per_worker or None)
    probs = _collect(ds, len(data_split.samples), data_split.num_classes)
    y_true = np.array([s["label"] for s in data_split.samples])
    metrics = compute_metrics(y_true, probs.argmax(1), data_split.num_classes)
    metrics.update(checkpoint=given, data=str(data), format=format, split=split, fold=fold, frame_order=order,
                   frame_order_why=why, precision=used)
    outputs = write_outputs(storage.location(out) if storage.is_uri(out) else Path(out), metrics,
                            data_split.label_names, data_split.samples, probs)
    print(f"{format} {split}{'' if fold is None else f' fold {fold}'}: UAR {100 * metrics['uar']:.2f}  "
          f"WAR {100 * metrics['war']:.2f}  F1 macro {100 * metrics['f1_macro']:.2f}  (n={metrics['n']}) -> {out}")
    return {**metrics, "outputs": outputs}


def _collect(ds, n: int, num_classes: int) -> np.ndarray:
    """The predictor's rows back in sample order -> probs [n, C]; padding rows dropped, a lost sample an error."""
    probs = np.zeros((n, num_classes), dtype=np.float32)
    seen = np.zeros(n, dtype=bool)
    for batch in ds.iter_batches(batch_size=None):
        keep = batch["weight"] > 0
        probs[batch["index"][keep]] = batch["probs"][keep]
        seen[batch["index"][keep]] = True
    if not seen.all():
        raise RuntimeError(f"evaluation lost {int((~seen).sum())} samples")
    return probs
