"""S2D (Chen et al., IEEE TAFFC 2024) for PyTorch: the model, its configurations, checkpoints and weights.

The names below load their submodule on first use (PEP 562), so ``s2d_model.weights``, ``s2d_model.labels`` and
``s2d_model.files`` can be used without importing torch (the pipeline's driver and its planning tasks do)."""
from __future__ import annotations

import importlib

from .configs import CONFIGS, get_config
from .labels import LABEL_SETS, labels  # binds the function ``labels`` over the submodule of that name

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


def create_model(name: str, num_classes: int, num_frames: int = 16, **overrides):
    """The video model (S2DVideo) of configuration ``name`` (see ``CONFIGS``) with a ``num_classes`` head."""
    from .s2d import S2DVideo

    return S2DVideo(num_classes, num_frames=num_frames, **{**get_config(name), **overrides})


def create_image_model(name: str, num_classes: int, **overrides):
    """The image (static) model (S2DImage) of configuration ``name``."""
    from .s2d import S2DImage

    return S2DImage(num_classes, **{**get_config(name), **overrides})


__all__ = ["create_model", "create_image_model", "CONFIGS", "get_config", "LABEL_SETS", "labels", *_WHERE]
