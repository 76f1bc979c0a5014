"""Which weights, labels, face crop and frame order an annotate run uses, resolved and checked on the driver before
any work starts, and the model they build.

Video weights (S2DVideo) classify 16-frame clips; image weights (S2DImage, the first training stage's model) a still
image's faces; face-api's expression net (``faceapi-expression``) classifies a clip's face frames one by one."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from . import storage
from .crops import OUR_CROP, Crop, check_order, parse_crop

RANDOM_TINY = "random-tiny"
FACEAPI = "faceapi-expression"
FACEAPI_TO_DFEW = (1, 2, 0, 3, 6, 5, 4)  # for each DFEW class (Happy, Sad, Neutral, ...), face-api's output index
UNTRAINED_WARNING = "weights 'random-tiny' (an s2d_tiny with random weights) are untrained: labels are meaningless"
IMAGE_WARNING = "image weights 'random-tiny' (an s2d_tiny with random weights) are untrained: labels are meaningless"


@dataclass(frozen=True)
class Classifier:
    """What the annotate run needs to know about its weights before any work starts."""

    weights: str  # the name or path the user gave
    path: Path | None  # resolved file; None for random-tiny
    labels: str  # a label set name, or the class names of a custom-trained model joined by commas
    landmark_path: Path | None  # S2D's landmark branch (None: face-api's net has none)
    warning: str | None = None
    trust: bool = False  # the file may hold pickled code (the user said they trust it)
    config: str = "s2d_tiny"  # the model configuration (s2d_model.CONFIGS), or "faceapi-expression"
    kind: str = "video"  # S2DVideo (16-frame clips), or "image": S2DImage (one aligned face)
    crop: Crop = OUR_CROP  # the face crop it was trained on: the face actor cuts this
    frame_order: str = "time"  # a clip's frames in time order, or as the authors' reader listed them
    precision: dict | None = None  # {"cpu": "fp32" | "bf16", "cuda": ...} (precision.resolve_precision); None: auto

    @property
    def class_names(self) -> tuple[str, ...]:
        from s2d_model import LABEL_SETS, labels

        return labels(self.labels) if self.labels in LABEL_SETS else tuple(n.strip() for n in self.labels.split(","))

    @property
    def fingerprint(self) -> dict:
        from .cache import file_fingerprint

        found = {"weights": self.weights, "file": file_fingerprint(self.path, sha256=False) if self.path else None,
                 "labels": self.labels,
                 "landmark_file": file_fingerprint(self.landmark_path) if self.landmark_path else None}
        if self.per_frame:  # the tfjs manifest's binary too
            from s2d_model.faceapi import data_files

            found["data_files"] = [file_fingerprint(p, sha256=False) for p in data_files(self.path)]
        return found

    @property
    def per_frame(self) -> bool:
        """A per-frame classifier (face-api's expression net): a clip's face frames are classified one by one."""
        return self.config == FACEAPI

    @property
    def used(self) -> dict:
        """The precision it runs in on each kind of device (``precision.resolve_precision``)."""
        from .precision import resolve_precision

        return self.precision or resolve_precision("auto", self.config)

    @property
    def input(self) -> dict:
        """What the model is fed and how it runs: its crop, (a video model's) frame order and its precision on each
        kind of device; in the settings hash, manifest and timeline metadata."""
        return {"crop": str(self.crop), "frame_order": self.frame_order if self.kind == "video" else None,
                "precision": self.used}


DEFAULT_LABELS_BY_CLASSES = {"video": {7: "dfew", 11: "mafw"}, "image": {7: "affectnet7", 8: "affectnet8"}}
RANDOM_BUILD = threading.Lock()  # random-tiny models built in several threads at once (actors' background loads)
HEAD = {"video": "head.fc_cls.weight", "image": "head.weight"}  # the classifier's weight in each kind's state dict


def resolve_classifier(weights: str = "s2d-dfew", labels: str | None = None,
                       landmark_weights: str | None = None, trust: bool = False, kind: str = "video",
                       crop: str | None = None, frame_order: str | None = None, precision: str = "auto") -> Classifier:
    """(see ``_resolve``) with its precision on each kind of device resolved (``precision.resolve_precision``)."""
    import dataclasses

    from .precision import check_precision, resolve_precision

    check_precision(precision)
    c = _resolve(weights, labels, landmark_weights, trust, kind, crop, frame_order)
    return dataclasses.replace(c, precision=resolve_precision(precision, c.config))


def _resolve(weights: str, labels: str | None, landmark_weights: str | None, trust: bool, kind: str,
             crop: str | None, frame_order: str | None) -> Classifier:
    """Resolve the classifier and landmark weights (WeightsNotFound with instructions if missing), open the
    checkpoint and check it is of ``kind`` (a CheckpointError or ValueError now, not inside an actor), and choose
    the label set: ``labels`` if given (a label-set name or class names ``a,b,c``), else the registry's entry, else
    what our own checkpoint records (its label set, or its class names), else by class count. The crop and frame
    order: ``crop`` / ``frame_order`` if given, else the registry's entry, else what our checkpoint records, else
    ``OUR_CROP`` in time order. face-api's expression net (``faceapi-expression`` or a path to its weights
    manifest) is read and checked whole here."""
    from s2d_model.labels import LABEL_SETS
    from s2d_model.weights import KNOWN, resolve

    given = {"crop": parse_crop(crop) if crop else None, "frame_order": check_order(frame_order) if frame_order else None}
    spec = KNOWN.get(weights)
    if is_faceapi(weights):
        return faceapi_classifier(weights, resolve(weights), labels, kind, given, KNOWN[FACEAPI])
    landmark_path = resolve(landmark_weights or "mobilefacenet")
    if weights == RANDOM_TINY:
        warning, default = (UNTRAINED_WARNING, "dfew") if kind == "video" else (IMAGE_WARNING, "affectnet7")
        return Classifier(weights, None, labels or default, landmark_path, warning, config="s2d_tiny", kind=kind,
                          crop=given["crop"] or OUR_CROP, frame_order=given["frame_order"] or "time")
    path = resolve(weights)
    from s2d_model.checkpoints import CheckpointError, infer_config, read_file, split_file  # torch: to read it

    fmt, sd, meta = split_file(read_file(path, trust), path)
    found = meta.get("kind") or ("image" if fmt == "image" else "video")
    if found != kind or HEAD[kind] not in sd:
        need = "the dynamic stage's weights (--weights)" if kind == "video" else \
            "the static stage's image-model weights (--image-weights)"
        raise CheckpointError(f"{path}: not an S2D {kind} model checkpoint ({fmt} layout, no '{HEAD[kind]}'); "
                              f"annotate needs {need}")
    n = sd[HEAD[kind]].shape[0]
    if labels is None:
        custom = ",".join(meta.get("label_names") or [])  # our checkpoint of a model trained on own classes
        labels = (spec.labels if spec is not None and spec.labels else None) or meta.get("labels") or custom or \
            DEFAULT_LABELS_BY_CLASSES[kind].get(n)
        if not labels:
            raise ValueError(f"{path}: {n} classes; pass the label set (--labels) explicitly")
    if labels not in LABEL_SETS and "," not in labels:
        raise ValueError(f"unknown label set '{labels}': choose one of {', '.join(LABEL_SETS)}, or name the classes "
                         "in order, separated by commas")
    crop = given["crop"] or parse_crop((spec and spec.crop) or meta.get("crop") or OUR_CROP)
    order = given["frame_order"] or (spec and spec.frame_order) or meta.get("frame_order") or "time"
    c = Classifier(weights, path, labels, landmark_path, trust=trust, config=meta.get("config") or infer_config(sd),
                   kind=kind, crop=crop, frame_order=order)
    if len(c.class_names) != n:
        raise ValueError(f"{path}: the checkpoint has {n} classes, but label set '{labels}' has "
                         f"{len(c.class_names)}")
    return c


def is_faceapi(weights: str) -> bool:
    """Names face-api's expression net (its registry name, or a path to its tfjs weights manifest)."""
    return weights == FACEAPI or str(weights).endswith("-weights_manifest.json")


def faceapi_classifier(weights: str, path: Path, labels: str | None, kind: str, given: dict, spec) -> Classifier:
    """face-api's expression net as a classifier of ``kind``: its files read and checked now (WeightsFileError naming
    the file), its 7 classes under the DFEW names, one frame at a time (so the frame order does not matter)."""
    from s2d_model.faceapi import load_expression_net

    if labels not in (None, "dfew"):
        raise ValueError(f"{weights}: face-api's expression net gives the 7 DFEW classes; --labels must be dfew, "
                         f"not '{labels}'")
    load_expression_net(path)
    crop = given["crop"] or parse_crop(spec.crop)
    return Classifier(weights, path, "dfew", None, config=FACEAPI, kind=kind, crop=crop, frame_order="time")


def build_model(c: Classifier):
    """The S2DVideo (or S2DImage, by ``c.kind``) for a resolved classifier, landmark branch loaded, in eval mode,
    for inference: the frozen landmark branch has its BatchNorms folded into the convolutions and runs channels_last
    (the same outputs up to float rounding, and it is most of a tiny clip's time)."""
    import torch

    import s2d_model as S

    from .fuse import fuse_conv_bn, onednn_pointwise

    if c.per_frame:
        from s2d_model.faceapi import load_expression_net
        from s2d_model.weights import resolve

        return load_expression_net(resolve(c.weights) if storage.is_uri(c.weights) else c.path)
    if c.path is None:  # the same random weights every time, the process's own RNG left as it was
        create = S.create_model if c.kind == "video" else S.create_image_model
        with RANDOM_BUILD, torch.random.fork_rng(devices=[]):  # the RNG is the process's: one build at a time
            torch.manual_seed(0)
            model = create("s2d_tiny", len(c.class_names))
        S.load_landmark_weights(model, c.landmark_path)
    else:
        from s2d_model.weights import resolve

        path = resolve(c.weights) if storage.is_uri(c.weights) else c.path  # an object: this node's own copy
        model, _ = S.load_model(path, c.landmark_path, c.trust, kind=c.kind)
        if model.num_classes != len(c.class_names):
            raise ValueError(f"{c.path}: {model.num_classes} classes, but label set '{c.labels}' has "
                             f"{len(c.class_names)}")
    model.eval()
    model.landmark = onednn_pointwise(fuse_conv_bn(model.landmark).to(memory_format=torch.channels_last))
    return model
