"""RetinaFace as a detector: priors, box and key-point decoding, NMS, and ``FaceDetector`` (RGB uint8 frames ->
per-frame boxes, scores and 5 key points in source pixels). The network and its checkpoints: ``retinaface.py``."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .fuse import fuse_conv_bn, onednn_activations, onednn_pointwise
from .retinaface import BGR_MEAN, FLOAT_FRAME_BYTES, PRIOR_CFG, load_retinaface


# ----------------------------------------------------------------------------------------------------------
# Priors and decoding

def make_priors(height: int, width: int, cfg: dict = PRIOR_CFG) -> torch.Tensor:
    """Anchors [P,4] as (cx, cy, w, h), normalised to the input size; order (level, y, x, anchor)."""
    out = []
    for step, sizes in zip(cfg["steps"], cfg["min_sizes"]):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        cy, cx = torch.meshgrid((torch.arange(fh) + 0.5) * step / height,
                                (torch.arange(fw) + 0.5) * step / width, indexing="ij")  # [fh,fw]
        for_level = []
        for s in sizes:
            sw, sh = torch.full_like(cx, s / width), torch.full_like(cy, s / height)
            for_level.append(torch.stack([cx, cy, sw, sh], dim=-1))  # [fh,fw,4]
        out.append(torch.stack(for_level, dim=2).reshape(-1, 4))  # [fh*fw*A,4]
    priors = torch.cat(out, dim=0)
    return priors.clamp_(0, 1) if cfg["clip"] else priors


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variance=PRIOR_CFG["variance"]) -> torch.Tensor:
    """loc [...,P,4], priors [P,4] -> boxes [...,P,4] as normalised x1,y1,x2,y2."""
    centre = priors[:, :2] + loc[..., :2] * variance[0] * priors[:, 2:]
    size = priors[:, 2:] * torch.exp(loc[..., 2:] * variance[1])
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def decode_landmarks(pre: torch.Tensor, priors: torch.Tensor, variance=PRIOR_CFG["variance"]) -> torch.Tensor:
    """pre [...,P,10], priors [P,4] -> 5 normalised (x, y) points [...,P,10]."""
    pts = pre.unflatten(-1, (5, 2))  # [...,P,5,2]
    pts = priors[:, None, :2] + pts * variance[0] * priors[:, None, 2:]
    return pts.flatten(-2)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression, as ``torchvision.ops.nms``: indices of the kept boxes [k, 4] (x1, y1, x2, y2),
    highest score first; a box is dropped when its IoU with a kept, higher-scoring one is above ``threshold``. Our
    own because importing torchvision (it imports torch._dynamo) slows the face actor's start-up, and a frame has a
    few tens of candidates (tests/test_retinaface.py checks it against torchvision's)."""
    b = boxes.detach().float().cpu().numpy()
    order = np.argsort(-scores.detach().float().cpu().numpy(), kind="stable")
    b = b[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    alive = np.ones(len(b), bool)
    keep = []
    for i in range(len(b)):
        if not alive[i]:
            continue
        keep.append(i)
        wh = np.clip(np.minimum(b[i, 2:], b[i + 1:, 2:]) - np.maximum(b[i, :2], b[i + 1:, :2]), 0, None)
        inter = wh[:, 0] * wh[:, 1]
        union = area[i] + area[i + 1:] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)  # two empty boxes: 0, not NaN
        alive[i + 1:] &= iou <= threshold
    return torch.from_numpy(order[keep]).to(boxes.device)


# ----------------------------------------------------------------------------------------------------------
# Detector

class FaceDetector:
    """RGB uint8 frames [N,H,W,3] -> per-frame {"bbox" [k,4], "score" [k], "kps5" [k,10]} in source pixels.

    Each frame is resized as a whole (bilinear, torch `interpolate`, align_corners=False, no antialias; frames larger
    than 4K are resized as uint8 by cv2.INTER_LINEAR, the same sampling, on the fixtures within 0.1 px) so that its
    long side is `long_side`, then detected at that size.
    """

    def __init__(self, weights: str | Path, network: str | None = None, device: str = "cpu",
                 score_threshold: float = 0.6, nms_threshold: float = 0.4, long_side: int = 640,
                 batch_size: int = 16, top_k: int = 5000, keep_top_k: int = 750):
        self.device = torch.device(device)
        # BN folded into the convolutions, channels_last: the same network, faster on CPU. The first
        # convolution's input channels are flipped, so the network takes RGB (minus the mean in RGB order) and
        # frames need no BGR copy.
        model = fuse_conv_bn(load_retinaface(weights, network).eval())
        first = model.body.stage1[0][0] if model.network == "mobilenet0.25" else model.body.conv1
        first.weight.data = first.weight.data.flip(1)
        self.model = onednn_activations(onednn_pointwise(model.to(self.device, memory_format=torch.channels_last)))
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.long_side = long_side
        self.batch_size = batch_size
        self.top_k = top_k
        self.keep_top_k = keep_top_k
        self.mean = torch.tensor(BGR_MEAN[::-1], device=self.device).view(1, 3, 1, 1)  # RGB order
        self._priors: dict[tuple[int, int], torch.Tensor] = {}  # (h, w) of the network input -> [P,4]
        self._means: dict[tuple[int, int], torch.Tensor] = {}  # (h, w) of the network input -> [h*w*3]

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) the frame is resized to: long side = self.long_side, aspect kept."""
        scale = self.long_side / max(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    def priors(self, height: int, width: int) -> torch.Tensor:
        key = (height, width)
        if key not in self._priors:
            self._priors[key] = make_priors(height, width).to(self.device)
        return self._priors[key]

    def flat_mean(self, height: int, width: int) -> torch.Tensor:
        """The RGB mean repeated over an [h,w,3] frame, flat: subtracting it is one contiguous pass."""
        if (height, width) not in self._means:
            self._means[height, width] = self.mean.view(3).repeat(height * width)
        return self._means[height, width]

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 RGB [n,H,W,3] -> network input [n,3,h,w] (resized, minus the RGB mean, channels_last). Frames
        already of the network's size go as one batch (NHWC is channels_last: no copy but the float conversion);
        others one at a time: turned to float32 and resized by torch (bilinear), or, above ``FLOAT_FRAME_BYTES``
        as float (an 8K frame is 400 MB), resized as uint8 by cv2.INTER_LINEAR first (the same sampling, rounded
        to uint8)."""
        size = self.input_size(*frames.shape[1:3])
        if tuple(frames.shape[1:3]) == size:
            x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).float()  # [n,h,w,3]
            x = x.view(len(x), -1).sub_(self.flat_mean(*size)).view(x.shape)  # one flat pass: faster than a [3] broadcast
            return x.permute(0, 3, 1, 2)
        out = []
        for f in frames:
            if f.shape[:2] != size and f.size * 4 > FLOAT_FRAME_BYTES:
                f = cv2.resize(f, size[::-1], interpolation=cv2.INTER_LINEAR)
            x = torch.from_numpy(np.ascontiguousarray(f)).to(self.device).permute(2, 0, 1)[None].float()  # [1,3,H,W]
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
            out.append(x)
        return (torch.cat(out) - self.mean).contiguous(memory_format=torch.channels_last)  # [n,3,h,w]

    def __call__(self, frames: np.ndarray) -> list[dict]:
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected uint8 RGB frames [N,H,W,3], got {frames.dtype} {frames.shape}")
        n, height, width = frames.shape[:3]
        results: list[dict] = []
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                x = self.preprocess(frames[start:start + self.batch_size])  # [b,3,h,w]
                loc, conf, landms = self.model(x)  # [b,P,4], [b,P,2], [b,P,10]
                priors = self.priors(*x.shape[-2:])
                for i in range(x.shape[0]):
                    results.append(self._select(loc[i], conf[i, :, 1], landms[i], priors, height, width))
        return results

    def _select(self, loc: torch.Tensor, scores: torch.Tensor, landms: torch.Tensor, priors: torch.Tensor,
                height: int, width: int) -> dict:
        """Threshold, top_k, decode (the priors kept only), NMS, keep_top_k, clip boxes; one frame."""
        keep = torch.nonzero(scores >= self.score_threshold).squeeze(1)
        keep = keep[scores[keep].argsort(descending=True)][: self.top_k]
        # Normalised coordinates times the source size = source pixels (per-axis resize undone).
        boxes = decode_boxes(loc[keep], priors[keep]) * loc.new_tensor([width, height] * 2)  # [k,4]
        points = decode_landmarks(landms[keep], priors[keep]) * loc.new_tensor([width, height] * 5)  # [k,10]
        scores = scores[keep]
        keep = nms(boxes, scores, self.nms_threshold)[: self.keep_top_k]  # sorted by score, descending
        boxes, scores, points = boxes[keep], scores[keep], points[keep]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        # numpy copies, so no torch tensor outlives the batch: small tensors kept by the caller sat above the batch's
        # large temporaries on the heap and kept it from shrinking (the face actor's memory grew with the video)
        return {
            "bbox": boxes.float().cpu().numpy().reshape(-1, 4).copy(),
            "score": scores.float().cpu().numpy().reshape(-1).copy(),
            "kps5": points.float().cpu().numpy().reshape(-1, 10).copy(),
        }
