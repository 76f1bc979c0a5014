"""S2D (Chen et al., IEEE TAFFC 2024) for PyTorch: the model, its configurations, checkpoints and weights."""
from .labels import LABEL_SETS, labels
from .mobilefacenet import MobileFaceNet

__all__ = ["LABEL_SETS", "labels", "MobileFaceNet"]
