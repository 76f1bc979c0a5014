"""Reading and writing the authors' checkpoint formats, key filters, and safe unpickling.

Formats read by ``load_checkpoint``:
- the authors' fine-tuned video file: ``{"model", "optimizer", "epoch", "scaler", "args"}`` where ``args``
  is a pickled ``argparse.Namespace`` (allow-listed, so ``weights_only`` loading still works);
- the authors' image file ``pretrain-AffectNet-7.pth``: ``{"model_state_dict": ...}`` with ``norm.*`` for
  the final LayerNorm and possibly the landmark net embedded (keys containing "landmark");
- our own files: ``{"model": state_dict, "s2d": {...}}`` (video) or ``{"model_state_dict": ..., "s2d": ...}``
  (image), i.e. the authors' layouts plus a small dict of plain values describing the model (configuration,
  labels, and the face crop and frame order it was trained on, where known).
Anything else pickled is refused unless ``trust=True`` (only for files whose origin you trust).
"""
from __future__ import annotations

import argparse
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.models import clean_state_dict
from torch import nn

from . import CONFIGS, create_image_model, create_model
from .files import atomic_write
from .mobilefacenet import MobileFaceNet
from .s2d import S2DBase, S2DImage, S2DVideo

SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(ValueError):
    pass


@dataclass
class LoadReport:
    path: str
    format: str  # "video" | "image" | "state_dict"
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


def read_file(path: str | Path, trust: bool = False) -> dict:
    """torch.load with ``weights_only`` and an allow-list; ``trust=True`` allows arbitrary pickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's wording differs by version: "Unsupported global: GLOBAL x.y" (2.4-2.6), "unsupported GLOBAL x.y
        # whose module x is blocked" (2.7+); both mean the pickle names code outside the allow-list
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(e), re.IGNORECASE)
        if found is None:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0]})") from None
        if not trust:
            raise CheckpointError(
                f"{path}: the file holds pickled Python code ({found.group(1)}), so it was not loaded (a weights "
                "file needs none; loading it would run that code). If you made the file yourself or trust where it "
                "came from, pass --trust (Python: trust=True).") from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def split_file(obj: dict, path: str | Path) -> tuple[str, dict, dict]:
    """-> (format, state_dict, our meta) for a loaded checkpoint dict."""
    meta = obj.get("s2d") if isinstance(obj.get("s2d"), dict) else {}
    if "model_state_dict" in obj:
        fmt, sd = "image", obj["model_state_dict"]
    elif "model" in obj and isinstance(obj["model"], dict):
        fmt, sd = "video", obj["model"]
    elif "state_dict" in obj and any(k.startswith("conv_4.") for k in obj["state_dict"]):
        raise CheckpointError(f"{path}: this is a MobileFaceNet landmark file; load it with load_landmark_weights")
    elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        fmt, sd = "state_dict", obj
    else:
        raise CheckpointError(f"{path}: unknown checkpoint layout (top-level keys: {sorted(obj)[:10]})")
    return fmt, clean_state_dict({k: v for k, v in sd.items() if "landmark" not in k}), meta


def _check_shapes(model: nn.Module, sd: dict, path) -> None:
    own = model.state_dict()
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) have the wrong shape for this model: " + "; ".join(bad[:20]))


def load_checkpoint(model: S2DBase, path: str | Path, trust: bool = False, verbose: bool = True) -> LoadReport:
    """Load an authors' or our own checkpoint into ``model`` (S2DVideo or S2DImage).

    Same-kind files load strictly. An image file into a video model follows the authors' recipe: drop
    landmark keys, ``norm.*`` -> ``ln_post.*``, drop ``patch_embed_prompt.proj.weight`` if its input channels
    differ, load non-strictly and print the missing/unexpected keys (expected missing: temporal embedding,
    TMA weights, ``head.fc_cls.*``).
    """
    return _load_state(model, *split_file(read_file(path, trust), path), path, verbose)


def _load_state(model: S2DBase, fmt: str, sd: dict, meta: dict, path, verbose: bool) -> LoadReport:
    """``load_checkpoint`` on a file already split (``split_file``)."""
    is_video = isinstance(model, S2DVideo)
    strict = fmt == "state_dict" or (fmt == "video") == is_video
    if is_video and "norm.weight" in sd and "ln_post.weight" not in sd:
        sd["ln_post.weight"], sd["ln_post.bias"] = sd.pop("norm.weight"), sd.pop("norm.bias")
    if not strict:
        w = sd.get("patch_embed_prompt.proj.weight")
        if w is not None and w.shape[1] != model.patch_embed_prompt.proj.weight.shape[1]:
            del sd["patch_embed_prompt.proj.weight"]
        own = model.state_dict()
        sd = {k: v for k, v in sd.items() if not (k.startswith("head") and k in own and v.shape != own[k].shape)}
    _check_shapes(model, sd, path)
    result = nn.Module.load_state_dict(model, sd, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("landmark.")]
    report = LoadReport(str(path), fmt, missing, list(result.unexpected_keys), meta)
    if strict and (missing or result.unexpected_keys):
        raise CheckpointError(f"{path}: keys do not match {type(model).__name__} "
                              f"(missing {missing[:20]}, unexpected {list(result.unexpected_keys)[:20]})")
    if verbose and not strict:
        print(f"Loaded {fmt} checkpoint {path} into {type(model).__name__} non-strictly")
        print(f"missing_keys: {missing}")
        print(f"unexpected_keys: {report.unexpected}")
    return report


def load_model(path: str | Path, landmark_weights: str | Path | None = None, trust: bool = False,
               verbose: bool = False, kind: str | None = None) -> tuple[S2DVideo | S2DImage, LoadReport]:
    """Build the model a checkpoint file describes and load it strictly: an S2DImage for an image file
    (``{"model_state_dict"}``, or our ``s2d.kind == "image"``), else an S2DVideo; configuration from our
    ``s2d.config`` or inferred from the tensors, classes from the head, frames from ``temporal_embedding``.
    Then the landmark branch from ``landmark_weights`` (a path) when given. ``kind`` ("video" / "image")
    refuses the other kind. -> (model in eval mode, LoadReport with ``meta["config"]`` set)."""
    fmt, sd, meta = split_file(read_file(path, trust), path)
    found = meta.get("kind") or ("image" if fmt == "image" else "video")
    if kind is not None and found != kind:
        raise CheckpointError(f"{path}: {found}-model checkpoint, but a {kind} model is needed here")
    head = "head.weight" if found == "image" else "head.fc_cls.weight"
    absent = [k for k in (head, "pos_embed") + (() if found == "image" else ("temporal_embedding",)) if k not in sd]
    if absent:
        raise CheckpointError(f"{path}: not an S2D {found} checkpoint (no {' / '.join(absent)})")
    config = meta.get("config") or infer_config(sd)
    if found == "image":
        model = create_image_model(config, sd[head].shape[0])
    else:
        model = create_model(config, sd[head].shape[0], num_frames=sd["temporal_embedding"].shape[1])
    report = _load_state(model, fmt, sd, {**meta, "config": config}, path, verbose)
    if landmark_weights is not None:
        load_landmark_weights(model, landmark_weights)
    return model.eval(), report


def save_checkpoint(model: S2DBase, path: str | Path, config: str | None = None, labels: str | None = None,
                    crop: str | None = None, frame_order: str | None = None, **extra) -> Path:
    """Write ``model`` atomically in the authors' layout (video: {"model"}, image: {"model_state_dict"}).
    ``crop`` (a ``pipeline.crops`` spec) and ``frame_order`` (``time`` / ``lexicographic``): what the model was
    trained on, None where unknown; files written before they were recorded simply lack the keys."""
    meta = {"kind": "video" if isinstance(model, S2DVideo) else "image", "config": config, "labels": labels,
            "num_classes": model.num_classes, "num_frames": model.num_frames, "crop": crop,
            "frame_order": frame_order, **extra}
    key = "model" if isinstance(model, S2DVideo) else "model_state_dict"
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # a GPU-trained model loads anywhere
    return atomic_write(path, lambda f: torch.save({key: state, "s2d": meta}, f))


def infer_config(sd: dict) -> str:
    """The ``CONFIGS`` name whose width and depth match a state_dict (each model is built on the meta device)."""
    dim = sd["pos_embed"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for name in CONFIGS:
        with torch.device("meta"):
            model = create_model(name, 1)
        if model.embed_dim == dim and len(model.blocks) == depth:
            return name
    raise CheckpointError(f"no registered configuration has embed_dim {dim} and depth {depth}")


def load_landmark_weights(model: S2DBase | MobileFaceNet, path: str | Path) -> None:
    """Load ``mobilefacenet_model_best.pth.tar`` (``{"state_dict": ...}``) strictly into the landmark net."""
    net = model if isinstance(model, MobileFaceNet) else model.landmark
    obj = read_file(path)
    sd = clean_state_dict(obj.get("state_dict", obj))
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: not a MobileFaceNet 68-point checkpoint: {str(e)[:600]}") from None
    net.eval()


def save_landmark_weights(model: S2DBase | MobileFaceNet, path: str | Path) -> Path:
    net = model if isinstance(model, MobileFaceNet) else model.landmark
    return atomic_write(path, lambda f: torch.save({"state_dict": net.state_dict()}, f))


__all__ = ["CheckpointError", "LoadReport", "load_model", "load_checkpoint", "save_checkpoint",
           "load_landmark_weights", "save_landmark_weights", "read_file", "split_file", "infer_config"]
