"""68-point landmarks for detector boxes: MobileFaceNet (default) or face-alignment's 2D FAN.

Both backends are callables ``(frames uint8[N,H,W,3] RGB, boxes list of float[k_i,4] x1,y1,x2,y2 source px)
-> list of float32[k_i,68,2]`` (x, y in source pixels). Neither runs a face detector.

MobileFaceNet (``s2d_model.mobilefacenet``, fixture/authors' ``{"state_dict": ...}`` checkpoint): square crop of
side ``int(1.2*min(w,h))`` centred at ``(x1 + w//2, y1 + h//2)``, zero padding outside the frame, cv2 INTER_LINEAR
to 112x112, BGR (as in the authors' demos; RGB measures the same), /255, no mean/std. Output 68 (x, y) in [0, 1] of
the crop: ``x = px * side + crop_x1``.

FAN (face-alignment 1.5, ``LandmarksType.TWO_D``, network size 4). Findings from the installed package:
- 1.5.0 does *not* use a TorchScript zip: ``FaceAlignment._load_native`` builds ``face_alignment.models.FAN(4)`` and
  ``load_state_dict``s ``torch.load(<file>, weights_only=True)`` of ``2DFAN4-11f355bf06.pth.tar`` (a plain
  state_dict), fetched by ``utils.load_file_from_url(models_urls['2DFAN-4'])`` into
  ``torch.hub.get_dir()/checkpoints/`` (downloaded if missing).
- ``FaceAlignment`` can only be pointed at a local file through the process-global torch hub dir (and it always
  builds a detector), so we do not construct it. We build the same ``FAN(4)`` ourselves, load the given file
  strictly, and apply face-alignment's own pre/post-processing exactly as ``get_landmarks_from_image`` does with
  ``flip_input=False`` (``utils.crop`` to 256, /255, last hourglass output, ``utils.get_preds_fromhm``). Nothing is
  ever downloaded: a missing file raises FileNotFoundError with the upstream name, URL and the expected place.
- The box -> scale rule divides by the detector's ``reference_scale``: 165 for face-alignment's RetinaFace-mnet
  detector (the same network as ours, so the default here), 195 for its SFD/folder detectors.
  ``tests/test_landmarks.py`` checks equality with ``FaceAlignment(..., face_detector='folder', compile=False)``.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

CROP = 112  # MobileFaceNet input side


def _empty() -> np.ndarray:
    return np.zeros((0, 68, 2), np.float32)


def _split(points: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Flat [M,68,2] -> one array per frame, by the box counts."""
    counts = [len(b) for b in boxes]
    out, i = [], 0
    for c in counts:
        out.append(points[i:i + c].astype(np.float32, copy=False) if c else _empty())
        i += c
    return out


def mobilefacenet_crop(image: np.ndarray, box) -> tuple[np.ndarray, float, float, int]:
    """uint8[H,W,3], box x1,y1,x2,y2 -> (uint8[112,112,3] crop, crop_x1, crop_y1, side)."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    w, h = x2 - x1, y2 - y1
    side = max(int(1.2 * min(w, h)), 1)
    cx, cy = int(np.floor(x1 + w // 2)), int(np.floor(y1 + h // 2))
    cx1, cy1 = cx - side // 2, cy - side // 2
    H, W = image.shape[:2]
    out = np.zeros((side, side, 3), np.uint8)  # zero padding outside the frame
    sx1, sy1, sx2, sy2 = max(cx1, 0), max(cy1, 0), min(cx1 + side, W), min(cy1 + side, H)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - cy1:sy2 - cy1, sx1 - cx1:sx2 - cx1] = image[sy1:sy2, sx1:sx2]
    return cv2.resize(out, (CROP, CROP), interpolation=cv2.INTER_LINEAR), float(cx1), float(cy1), side


class MobileFaceNetLandmarks:
    """MobileFaceNet 68-point landmarks for given boxes (see the module docstring for the crop rule)."""

    def __init__(self, weights: str | Path, device: str = "cpu", batch_size: int = 64):
        from s2d_model.mobilefacenet import MobileFaceNet

        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"MobileFaceNet weights not found: {path}")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # not a torch file, truncated, pickled objects...
            raise ValueError(f"{path}: cannot read as a torch checkpoint: {e}") from e
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
            raise ValueError(f"{path}: expected a dict with a 'state_dict' key (MobileFaceNet checkpoint)")
        net = MobileFaceNet((112, 112), 136)
        try:
            net.load_state_dict(ckpt["state_dict"], strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: state_dict does not match MobileFaceNet([112,112],136): {e}") from e
        from .fuse import fuse_conv_bn, onednn_pointwise

        self.net = onednn_pointwise(fuse_conv_bn(net.eval()).to(device, memory_format=torch.channels_last))
        self.device, self.batch_size, self.weights = device, int(batch_size), path

    def __call__(self, frames: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
        if len(frames) != len(boxes):
            raise ValueError(f"{len(frames)} frames but {len(boxes)} box lists")
        crops, origin = [], []  # M x uint8[112,112,3]; M x (x1, y1, side)
        for frame, fb in zip(frames, boxes):
            for box in np.asarray(fb, np.float32).reshape(-1, 4):
                c, x1, y1, side = mobilefacenet_crop(frame, box)
                crops.append(c[..., ::-1])  # RGB -> BGR, as the authors' demos feed it
                origin.append((x1, y1, side))
        if not crops:
            return _split(_empty(), boxes)
        x = np.ascontiguousarray(np.stack(crops).transpose(0, 3, 1, 2), np.float32) / 255.0  # [M,3,112,112]
        outs = []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                xi = torch.from_numpy(x[i:i + self.batch_size]).to(self.device)
                lm, _ = self.net(xi.contiguous(memory_format=torch.channels_last))
                outs.append(lm.float().cpu().numpy())
        pts = np.concatenate(outs).reshape(-1, 68, 2)  # [M,68,2] in [0,1] of the crop
        o = np.asarray(origin, np.float64)  # [M,3]
        pts = pts * o[:, None, 2:3] + o[:, None, :2]
        return _split(pts.astype(np.float32), boxes)


def fan_upstream() -> tuple[str, str]:
    """(file name, URL) of face-alignment's 2D FAN-4 weights, from face-alignment's own config."""
    from urllib.parse import urlparse

    from face_alignment.api import models_urls

    url = models_urls["2DFAN-4"]
    return os.path.basename(urlparse(url).path), url


def fan_default_path() -> Path:
    """Where face-alignment itself caches the file: ``torch.hub.get_dir()/checkpoints/<name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / fan_upstream()[0]


class FANLandmarks:
    """face-alignment's 2D FAN-4 on given boxes, loaded from a local file only (never downloads)."""

    def __init__(self, weights: str | Path | None = None, device: str = "cpu", batch_size: int = 16,
                 reference_scale: float = 165.0):
        from face_alignment.models import FAN

        name, url = fan_upstream()
        path = Path(weights).expanduser() if weights is not None else fan_default_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"FAN weights not found: {path}. Get face-alignment's 2D FAN-4 state_dict '{name}' from {url} and "
                f"put it at {fan_default_path()} (face-alignment's cache) or pass its path as `weights`.")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: cannot read as a torch state_dict: {e}") from e
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        net = FAN(4)
        try:
            net.load_state_dict(sd, strict=True)
        except Exception as e:
            raise ValueError(f"{path}: not a face-alignment FAN(4) state_dict: {e}") from e
        from .fuse import fuse_conv_bn

        self.net = fuse_conv_bn(net.eval()).to(device, memory_format=torch.channels_last)  # faster on CPU
        self.device, self.batch_size, self.weights = device, int(batch_size), path
        self.reference_scale = float(reference_scale)

    def __call__(self, frames: np.ndarray, boxes: list[np.ndarray]) -> list[np.ndarray]:
        from face_alignment.utils import CENTER_Y_OFFSET, crop, get_preds_fromhm

        if len(frames) != len(boxes):
            raise ValueError(f"{len(frames)} frames but {len(boxes)} box lists")
        crops, geo = [], []  # M x float32[3,256,256]; M x (center float64[2], scale)
        for frame, fb in zip(frames, boxes):
            for d in np.asarray(fb, np.float64).reshape(-1, 4):  # same arithmetic as get_landmarks_from_image
                center = np.array([d[2] - (d[2] - d[0]) / 2.0, d[3] - (d[3] - d[1]) / 2.0])
                center[1] = center[1] - (d[3] - d[1]) * CENTER_Y_OFFSET
                scale = (d[2] - d[0] + d[3] - d[1]) / self.reference_scale
                crops.append(crop(frame, center, scale).transpose((2, 0, 1)).astype(np.float32) / 255.0)
                geo.append((center, scale))
        if not crops:
            return _split(_empty(), boxes)
        x = torch.from_numpy(np.stack(crops))  # [M,3,256,256]
        heat = []
        with torch.inference_mode():
            for i in range(0, len(x), self.batch_size):
                out = self.net(x[i:i + self.batch_size].to(self.device))
                heat.append((out[-1] if isinstance(out, list) else out).float().cpu().numpy())
        heat = np.concatenate(heat)  # [M,68,64,64]
        pts = np.stack([get_preds_fromhm(heat[i:i + 1], c, s)[1].reshape(68, 2) for i, (c, s) in enumerate(geo)])
        return _split(pts.astype(np.float32), boxes)


def get_landmarker(name: str = "mobilefacenet", weights: str | Path | None = None,
                   device: str = "cpu") -> Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]:
    """``"mobilefacenet"`` (weights: path or registered name; None -> ``s2d_model.weights`` 'mobilefacenet')
    or ``"fan"`` (weights: path; None -> face-alignment's cache path)."""
    if name == "mobilefacenet":
        from s2d_model.weights import resolve

        return MobileFaceNetLandmarks(resolve(str(weights) if weights is not None else "mobilefacenet"), device)
    if name == "fan":
        return FANLandmarks(weights, device)
    raise ValueError(f"unknown landmark backend {name!r}: use 'mobilefacenet' or 'fan'")
