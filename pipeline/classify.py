"""The S2D actor: batches of aligned uint8 clips -> class probabilities (a callable class for map_batches)."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RANDOM_TINY = "random-tiny"
UNTRAINED_WARNING = "weights 'random-tiny' (an s2d_tiny with random weights) are untrained: labels are meaningless"


@dataclass(frozen=True)
class Classifier:
    """What the annotate run needs to know about its weights before any work starts."""

    weights: str  # the name or path the user gave
    path: Path | None  # resolved file; None for random-tiny
    labels: str  # a label set name, or the class names of a custom-trained model joined by commas
    landmark_path: Path
    warning: str | None = None

    @property
    def class_names(self) -> tuple[str, ...]:
        from s2d_model import LABEL_SETS, labels

        return labels(self.labels) if self.labels in LABEL_SETS else tuple(n.strip() for n in self.labels.split(","))

    @property
    def fingerprint(self) -> dict:
        from .cache import file_fingerprint

        return {"weights": self.weights, "file": file_fingerprint(self.path, sha256=False) if self.path else None,
                "labels": self.labels, "landmark_file": file_fingerprint(self.landmark_path)}


DEFAULT_LABELS_BY_CLASSES = {7: "dfew", 11: "mafw"}


def resolve_classifier(weights: str = "s2d-dfew", labels: str | None = None,
                       landmark_weights: str | None = None) -> Classifier:
    """Resolve the classifier and landmark weights (WeightsNotFound with instructions if missing) and the label set:
    ``labels`` if given (a label-set name or class names ``a,b,c``), else the registry's entry, else what our own
    checkpoint records (its label set, or its class names), else by class count."""
    from s2d_model import LABEL_SETS
    from s2d_model.checkpoints import read_file, split_file
    from s2d_model.weights import KNOWN, resolve

    landmark_path = resolve(landmark_weights or "mobilefacenet")
    if weights == RANDOM_TINY:
        return Classifier(weights, None, labels or "dfew", landmark_path, UNTRAINED_WARNING)
    path = resolve(weights)
    if labels is None:
        spec = KNOWN.get(weights)
        if spec is not None and spec.labels:
            labels = spec.labels
        else:
            _, sd, meta = split_file(read_file(path), path)
            n = sd["head.fc_cls.weight"].shape[0] if "head.fc_cls.weight" in sd else None
            custom = ",".join(meta.get("label_names") or [])  # our checkpoint of a model trained on own classes
            labels = meta.get("labels") or custom or DEFAULT_LABELS_BY_CLASSES.get(n)
            if not labels:
                raise ValueError(f"{path}: {n} classes; pass the label set (--labels) explicitly")
    if labels not in LABEL_SETS and "," not in labels:
        raise ValueError(f"unknown label set '{labels}': choose one of {', '.join(LABEL_SETS)}, or name the classes "
                         "in order, separated by commas")
    return Classifier(weights, path, labels, landmark_path)


def build_model(c: Classifier):
    """The S2DVideo for a resolved classifier, landmark branch loaded, in eval mode."""
    import torch

    import s2d_model as S

    if c.path is None:
        torch.manual_seed(0)
        model = S.create_model("s2d_tiny", len(c.class_names))
    else:
        model, _ = S.load_video_model(c.path)
        if model.num_classes != len(c.class_names):
            raise ValueError(f"{c.path}: {model.num_classes} classes, but label set '{c.labels}' has "
                             f"{len(c.class_names)}")
    S.load_landmark_weights(model, c.landmark_path)
    return model.eval()


class ClassifyClips:
    """``clip`` rows (payload ``clip`` uint8 [16, 224, 224, 3]) -> payload ``probs`` float32 [C]; the clip is dropped.
    Other rows pass through. It takes whole blocks as they come (no waiting for more rows to fill a batch) and runs
    their clips through the model ``batch_size`` at a time.

    Normalisation (ImageNet mean/std) happens here, on the device. Clips whose ``error`` is set get NaN probs.
    On CUDA the forward runs under bf16 autocast.
    """

    def __init__(self, classifier: Classifier, device: str = "cpu", batch_size: int = 8,
                 crash_marker: str | None = None):
        import torch

        self.crash_marker = crash_marker  # fault injection for tests: die once, mid-run (see run_annotate)
        from s2d_model import IMAGENET_MEAN, IMAGENET_STD

        self.device = torch.device(device)
        self.model = build_model(classifier).to(self.device)
        self.mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1, 1)
        self.num_classes, self.batch_size = len(classifier.class_names), batch_size

    def probabilities(self, clips: np.ndarray) -> np.ndarray:
        """uint8 [B, T, H, W, 3] -> float32 [B, C]."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(clips)).to(self.device, non_blocking=True)
        x = x.permute(0, 4, 1, 2, 3).float().div_(255.0)  # [B, 3, T, H, W] in [0, 1]
        x = (x - self.mean) / self.std
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.model(x)
        return logits.float().softmax(-1).cpu().numpy()

    def __call__(self, batch: dict) -> dict:
        clips = [p for k, p in zip(batch["kind"], batch["payload"]) if k == "clip"]
        if clips and self.crash_marker and not Path(self.crash_marker).exists():
            Path(self.crash_marker).touch()
            os._exit(1)  # as if the process were killed while holding these clips
        good = [p for p in clips if not p["error"]]
        for i in range(0, len(good), self.batch_size):
            part, t = good[i:i + self.batch_size], time.perf_counter()
            probs = self.probabilities(np.stack([p["clip"] for p in part]))
            for p, pr in zip(part, probs):
                p["probs"], p["s2d_seconds"] = pr, (time.perf_counter() - t) / len(part)  # its share of the forward
        for p in clips:
            p.pop("clip")
            p.setdefault("probs", np.full(self.num_classes, np.nan, np.float32))
        return batch
