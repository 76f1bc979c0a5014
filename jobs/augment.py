"""Clip and image augmentations for S2D training (``../shared/S2D_REFERENCE.md`` section 3).

Pure functions and small classes on numpy / torch: no Ray here, so they are testable on their own.
Shapes: T frames, H x W pixels, uint8 RGB frames are ``[T, H, W, 3]``.

Training clip recipe (the authors' VideoMAE-style pipeline), every random choice shared by all T frames:
1. a window of T consecutive frames (all frames, padded with the last one, if fewer) -- ``train_window``
2. each frame resized to a square (bilinear, aspect ratio not kept) -- ``resize_frames``
3. RandAugment ``rand-m7-n4-mstd0.5-inc1`` (timm) with the same ops and magnitudes on every frame
4. RandomResizedCrop to 224, scale (0.08, 1), ratio (3/4, 4/3), one box for the clip
5. horizontal flip (p 0.5) of the whole clip
6. random erasing (p 0.25), one box for all frames, filled with per-pixel Gaussian noise

Everything stays uint8 until the model input: erasing draws its noise as ImageNet-normalised N(0, 1) values
mapped back to pixels (``mean + std * N(0,1)``, times 255, clipped), which is what timm's "pixel" mode
gives after normalisation, up to the clipping. ``to_model_input`` does the [0,1] scaling and normalisation
(on the training device). Mixup/CutMix act on batches and live in ``jobs/train.py``.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN, IMAGENET_DEFAULT_STD as IMAGENET_STD

RAND_AUGMENT = "rand-m7-n4-mstd0.5-inc1"


# ----------------------------------------------------------------------------- temporal windows
def train_window(n: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a random window of ``num_frames`` consecutive frames out of ``n`` (padded with the last)."""
    if n <= 0:
        raise ValueError("a clip needs at least one frame")
    if n <= num_frames:
        return np.minimum(np.arange(num_frames), n - 1)
    start = int(rng.integers(0, n - num_frames + 1))
    return np.arange(start, start + num_frames)


def eval_windows(n: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The test protocol's two views: the first ``num_frames`` frames and the last ``num_frames``."""
    if n <= 0:
        raise ValueError("a clip needs at least one frame")
    first = np.minimum(np.arange(num_frames), n - 1)
    last = first if n <= num_frames else np.arange(n - num_frames, n)
    return first, last


# ----------------------------------------------------------------------------- spatial ops
def resize_frames(frames: np.ndarray, size: int = 224) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, size, size, 3] (PIL bilinear; aspect ratio not kept)."""
    if frames.shape[1:3] == (size, size):
        return np.ascontiguousarray(frames)
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.BILINEAR)) for f in frames])


def rand_augment(size: int = 224, config: str = RAND_AUGMENT):
    """timm's RandAugment with the hyper-parameters the authors' video pipeline passes."""
    from timm.data import rand_augment_transform

    hparams = dict(translate_const=int(size * 0.45),
                   img_mean=tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN),
                   interpolation=Image.BICUBIC)
    return rand_augment_transform(config, hparams)


def apply_consistently(op, frames: np.ndarray, seed: int) -> np.ndarray:
    """Run a timm op (it draws from ``random`` and ``np.random``) on every frame with the same draws.

    The global random states are re-seeded identically before each frame and restored afterwards, so
    the same ops, magnitudes and signs hit all T frames. uint8 [T, H, W, 3] -> same shape.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        out = []
        for f in frames:
            random.seed(seed)
            np.random.seed(seed % 2**32)
            out.append(np.asarray(op(Image.fromarray(f)).convert("RGB")))
        return np.stack(out)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def rrc_box(height: int, width: int, rng: np.random.Generator, scale=(0.08, 1.0),
            ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box (top, left, h, w): torchvision's algorithm, drawn from ``rng``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height  # fallback: central crop
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def erase_box(height: int, width: int, rng: np.random.Generator, min_area=0.02, max_area=1 / 3,
              min_aspect=0.3) -> tuple[int, int, int, int] | None:
    """timm RandomErasing's box (top, left, h, w) for one erasure, or None if no box fitted in 10 tries."""
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    for _ in range(10):
        target = height * width * rng.uniform(min_area, max_area)
        aspect = math.exp(rng.uniform(*log_aspect))
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if w < width and h < height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    return None


def erase_noise(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [h, w, 3]: normalised N(0, 1) noise as pixels (mean + std * z, x255, clipped)."""
    z = rng.standard_normal((h, w, 3))
    return np.clip((np.asarray(IMAGENET_MEAN) + np.asarray(IMAGENET_STD) * z) * 255, 0, 255).round().astype(np.uint8)


class ClipAugment:
    """The training augmentation for a clip (or an image: T = 1). uint8 [T, H, W, 3] -> uint8 [T, S, S, 3]."""

    def __init__(self, size: int = 224, randaug: str | None = RAND_AUGMENT, scale=(0.08, 1.0),
                 ratio=(3 / 4, 4 / 3), flip_prob: float = 0.5, erase_prob: float = 0.25):
        self.size = size
        self.randaug = rand_augment(size, randaug) if randaug else None
        self.scale, self.ratio = scale, ratio
        self.flip_prob, self.erase_prob = flip_prob, erase_prob

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from torchvision.transforms.functional import resized_crop

        frames = resize_frames(frames, self.size)  # [T, S, S, 3]
        if self.randaug is not None:
            frames = apply_consistently(self.randaug, frames, int(rng.integers(2**63 - 1)))
        t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # [T, 3, S, S] uint8
        top, left, h, w = rrc_box(self.size, self.size, rng, self.scale, self.ratio)
        t = resized_crop(t, top, left, h, w, [self.size, self.size], antialias=True)
        if rng.random() < self.flip_prob:
            t = t.flip(-1)
        out = t.permute(0, 2, 3, 1).numpy().copy()  # [T, S, S, 3], a copy: never write into the caller's frames
        if rng.random() < self.erase_prob:
            box = erase_box(self.size, self.size, rng)
            if box is not None:
                top, left, h, w = box
                out[:, top:top + h, left:left + w] = erase_noise(h, w, rng)  # the same box and noise on every frame
        return out


# ----------------------------------------------------------------------------- model input
def to_model_input(clips: torch.Tensor) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float32 [B, 3, T, H, W], scaled to [0, 1] and ImageNet-normalised.

    For the image model take ``[:, :, 0]`` of the result (T = 1).
    """
    x = clips.permute(0, 4, 1, 2, 3).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1, 1)
    return (x - mean) / std
