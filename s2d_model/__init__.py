"""S2D (Chen et al., IEEE TAFFC 2024) for PyTorch: the model, its checkpoints and weights.

The models are timm models (``s2d_model.s2d`` registers ``s2d_base_patch16_224`` and ``s2d_tiny_patch16_224``):
after ``import s2d_model.s2d``, ``timm.create_model("s2d_base_patch16_224", num_classes=7)`` builds the video model
(``image=True``: the image model). The names below load their submodule on first use (PEP 562), so
``s2d_model.weights``, ``s2d_model.labels`` and ``s2d_model.files`` can be used without importing torch (the
pipeline's driver and its planning tasks do)."""
from __future__ import annotations

import importlib

from .labels import LABEL_SETS, labels  # binds the function ``labels`` over the submodule of that name

# Configuration names as our checkpoints record them (``s2d.config``) -> the timm model each builds.
CONFIGS: dict[str, str] = {"s2d_base_patch16_224": "s2d_base_patch16_224", "s2d_tiny": "s2d_tiny_patch16_224"}

_WHERE = {
    "CheckpointError": "checkpoints", "LoadReport": "checkpoints", "infer_config": "checkpoints",
    "load_checkpoint": "checkpoints", "load_landmark_weights": "checkpoints", "load_model": "checkpoints",
    "save_checkpoint": "checkpoints", "save_landmark_weights": "checkpoints",
    "MobileFaceNet": "mobilefacenet", "IMAGENET_MEAN": "s2d", "IMAGENET_STD": "s2d", "S2DImage": "s2d",
    "S2DVideo": "s2d",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 's2d_model' has no attribute {name!r}")


def _timm_name(name: str) -> str:
    """A ``CONFIGS`` name or a registered S2D timm model name -> the timm model name (KeyError for others)."""
    import timm

    importlib.import_module(".s2d", __name__)  # registers the S2D models with timm
    model = CONFIGS.get(name, name)
    if not (model.startswith("s2d_") and timm.is_model(model)):
        raise KeyError(f"unknown model configuration '{name}': choose one of {', '.join(CONFIGS)}")
    return model


def create_model(name: str, num_classes: int, num_frames: int = 16, **overrides):
    """The video model (S2DVideo) of configuration ``name`` (a ``CONFIGS`` name or a registered S2D timm name)
    with a ``num_classes`` head."""
    import timm

    return timm.create_model(_timm_name(name), num_classes=num_classes, num_frames=num_frames, **overrides)


def create_image_model(name: str, num_classes: int, **overrides):
    """The image (static) model (S2DImage) of configuration ``name``."""
    import timm

    return timm.create_model(_timm_name(name), num_classes=num_classes, image=True, **overrides)


__all__ = ["create_model", "create_image_model", "CONFIGS", "LABEL_SETS", "labels", *_WHERE]
