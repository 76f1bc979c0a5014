"""S2D (Chen et al., IEEE TAFFC 2024) for PyTorch: the model, its configurations, checkpoints and weights."""
from __future__ import annotations

from .checkpoints import (CheckpointError, LoadReport, infer_config, load_checkpoint, load_landmark_weights, load_model,
                          save_checkpoint, save_landmark_weights)
from .configs import CONFIGS, get_config
from .labels import LABEL_SETS, labels
from .mobilefacenet import MobileFaceNet
from .s2d import IMAGENET_MEAN, IMAGENET_STD, S2DImage, S2DVideo


def create_model(name: str, num_classes: int, num_frames: int = 16, **overrides) -> S2DVideo:
    """The video model of configuration ``name`` (see ``CONFIGS``) with a ``num_classes`` head."""
    return S2DVideo(num_classes, num_frames=num_frames, **{**get_config(name), **overrides})


def create_image_model(name: str, num_classes: int, **overrides) -> S2DImage:
    """The image (static) model of configuration ``name``."""
    return S2DImage(num_classes, **{**get_config(name), **overrides})


__all__ = ["create_model", "create_image_model", "load_model", "load_checkpoint",
           "save_checkpoint", "load_landmark_weights", "save_landmark_weights", "infer_config", "CheckpointError",
           "LoadReport", "LABEL_SETS", "labels", "CONFIGS", "get_config", "S2DVideo", "S2DImage", "MobileFaceNet",
           "IMAGENET_MEAN", "IMAGENET_STD"]
