"""RetinaFace face detector (MobileNetV1-0.25 or ResNet-50 backbone), our own implementation.

The module and parameter names follow the checkpoints of biubug6/Pytorch_Retinaface
(`mobilenet0.25_Final.pth`, `Resnet50_Final.pth`) and the ResNet-50 release of ternaus/retinaface
(a .zip holding one torch-saved state_dict with the same key layout), so those files load strictly.

Network input: BGR float32 minus the mean (104, 117, 123), not scaled, NCHW.
Network output: loc [N,P,4], softmax conf [N,P,2] (column 1 = face), landmarks [N,P,10] (5 points:
left eye, right eye, nose, left and right mouth corners), P = priors of the three levels (strides 8, 16, 32)
times 2 anchors per location.

`FaceDetector` wraps it: RGB uint8 frames [N,H,W,3] -> per-frame boxes, scores and 5 key points in
source pixels.
"""
from __future__ import annotations

import io
import math
import pickle
import zipfile
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Backbone settings per network name (as in the reference configs `cfg_mnet` / `cfg_re50`).
NETWORKS = {
    "mobilenet0.25": dict(in_channel=32, out_channel=64),
    "resnet50": dict(in_channel=256, out_channel=256),
}

# Prior (anchor) configuration, the same for both networks.
# Finding (checked on the fixtures with mobilenet0.25_Final.pth): the expectations.json `_doc` string names
# min_sizes [[10,20],[32,64],[128,256]], the fixtures README the standard [[16,32],[64,128],[256,512]].
# The standard sizes reproduce the README "Detector check" boxes at long side 640 to within 1 px
# (multi_face.jpg, single_face.jpg) and every face count at 320 and 640 (images and all video frames).
# The [[10,20],...] sizes give 3-10 half-size boxes per face (multi_face.jpg at 640: 10 boxes, each still
# 3-6), matching neither table. So the `_doc` string is wrong; tests/test_retinaface.py pins both facts.
# (The expectations.json boxes themselves are approximate: ours at long side 320 lie within 13 px of them.)
PRIOR_CFG = dict(
    min_sizes=[[16, 32], [64, 128], [256, 512]],
    steps=[8, 16, 32],
    variance=[0.1, 0.2],
    clip=False,
)

BGR_MEAN = (104.0, 117.0, 123.0)
FLOAT_FRAME_BYTES = 3840 * 2160 * 3 * 4  # frames up to 4K are resized as float32; larger ones as uint8 first


# ----------------------------------------------------------------------------------------------------------
# Building blocks. Index layout inside each nn.Sequential matters: it gives the checkpoint key names.

def conv_bn(inp: int, oup: int, stride: int = 1, leaky: float = 0.0) -> nn.Sequential:
    """3x3 conv + BN + LeakyReLU. Keys: .0 (conv), .1 (bn)."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_bn_no_relu(inp: int, oup: int) -> nn.Sequential:
    """3x3 conv + BN, no activation."""
    return nn.Sequential(nn.Conv2d(inp, oup, 3, 1, 1, bias=False), nn.BatchNorm2d(oup))


def conv_bn1x1(inp: int, oup: int, leaky: float = 0.0) -> nn.Sequential:
    """1x1 conv + BN + LeakyReLU."""
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


def conv_dw(inp: int, oup: int, stride: int, leaky: float = 0.1) -> nn.Sequential:
    """Depthwise-separable block. Keys: .0/.1 depthwise conv + BN, .3/.4 pointwise conv + BN."""
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.LeakyReLU(negative_slope=leaky, inplace=True),
    )


class MobileNetV1Body(nn.Module):
    """MobileNetV1 x0.25 trunk; returns the stride 8, 16, 32 maps (64, 128, 256 channels)."""

    def __init__(self):
        super().__init__()
        self.stage1 = nn.Sequential(  # -> stride 8, 64 ch
            conv_bn(3, 8, 2, leaky=0.1),
            conv_dw(8, 16, 1),
            conv_dw(16, 32, 2),
            conv_dw(32, 32, 1),
            conv_dw(32, 64, 2),
            conv_dw(64, 64, 1),
        )
        self.stage2 = nn.Sequential(  # -> stride 16, 128 ch
            conv_dw(64, 128, 2),
            *[conv_dw(128, 128, 1) for _ in range(5)],
        )
        self.stage3 = nn.Sequential(  # -> stride 32, 256 ch
            conv_dw(128, 256, 2),
            conv_dw(256, 256, 1),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c1 = self.stage1(x)  # [N,64,H/8,W/8]
        c2 = self.stage2(c1)  # [N,128,H/16,W/16]
        c3 = self.stage3(c2)  # [N,256,H/32,W/32]
        return [c1, c2, c3]


class ResNet50Body(nn.Module):
    """torchvision ResNet-50 without avgpool/fc; returns layer2, layer3, layer4 (512, 1024, 2048 ch)."""

    def __init__(self):
        super().__init__()
        import torchvision  # here only: importing it costs ~1.7 s (see ``nms``)

        r = torchvision.models.resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [N,64,H/4,W/4]
        x = self.layer1(x)  # [N,256,H/4,W/4]
        c2 = self.layer2(x)  # [N,512,H/8,W/8]
        c3 = self.layer3(c2)  # [N,1024,H/16,W/16]
        c4 = self.layer4(c3)  # [N,2048,H/32,W/32]
        return [c2, c3, c4]


class FPN(nn.Module):
    """Top-down feature pyramid: three lateral 1x1 convs, nearest upsampling, two 3x3 merge convs."""

    def __init__(self, in_channels_list: list[int], out_channels: int):
        super().__init__()
        leaky = 0.1 if out_channels <= 64 else 0.0
        self.output1 = conv_bn1x1(in_channels_list[0], out_channels, leaky=leaky)
        self.output2 = conv_bn1x1(in_channels_list[1], out_channels, leaky=leaky)
        self.output3 = conv_bn1x1(in_channels_list[2], out_channels, leaky=leaky)
        self.merge1 = conv_bn(out_channels, out_channels, leaky=leaky)
        self.merge2 = conv_bn(out_channels, out_channels, leaky=leaky)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        p1 = self.output1(feats[0])  # [N,C,H/8,W/8]
        p2 = self.output2(feats[1])  # [N,C,H/16,W/16]
        p3 = self.output3(feats[2])  # [N,C,H/32,W/32]
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return [p1, p2, p3]


class SSH(nn.Module):
    """Single-stage headless context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches concatenated."""

    def __init__(self, in_channel: int, out_channel: int):
        super().__init__()
        assert out_channel % 4 == 0
        leaky = 0.1 if out_channel <= 64 else 0.0
        self.conv3X3 = conv_bn_no_relu(in_channel, out_channel // 2)
        self.conv5X5_1 = conv_bn(in_channel, out_channel // 4, leaky=leaky)
        self.conv5X5_2 = conv_bn_no_relu(out_channel // 4, out_channel // 4)
        self.conv7X7_2 = conv_bn(out_channel // 4, out_channel // 4, leaky=leaky)
        self.conv7x7_3 = conv_bn_no_relu(out_channel // 4, out_channel // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.conv3X3(x)  # [N,C/2,h,w]
        t = self.conv5X5_1(x)
        b5 = self.conv5X5_2(t)  # [N,C/4,h,w]
        b7 = self.conv7x7_3(self.conv7X7_2(t))  # [N,C/4,h,w]
        return F.relu(torch.cat([b3, b5, b7], dim=1))  # [N,C,h,w]


class Head(nn.Module):
    """1x1 conv predicting `values` numbers per anchor; output [N, h*w*anchors, values]."""

    def __init__(self, in_channel: int, values: int, num_anchors: int = 2):
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(in_channel, num_anchors * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)  # [N,h,w,A*values]
        return out.reshape(out.shape[0], -1, self.values)  # rows ordered (y, x, anchor) like the priors


class RetinaFace(nn.Module):
    def __init__(self, network: str = "mobilenet0.25"):
        super().__init__()
        if network not in NETWORKS:
            raise ValueError(f"unknown RetinaFace network {network!r}; choose from {sorted(NETWORKS)}")
        self.network = network
        cin, cout = NETWORKS[network]["in_channel"], NETWORKS[network]["out_channel"]
        self.body = MobileNetV1Body() if network == "mobilenet0.25" else ResNet50Body()
        self.fpn = FPN([cin * 2, cin * 4, cin * 8], cout)
        self.ssh1, self.ssh2, self.ssh3 = SSH(cout, cout), SSH(cout, cout), SSH(cout, cout)
        self.ClassHead = nn.ModuleList([Head(cout, 2) for _ in range(3)])
        self.BboxHead = nn.ModuleList([Head(cout, 4) for _ in range(3)])
        self.LandmarkHead = nn.ModuleList([Head(cout, 10) for _ in range(3)])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [N,3,H,W] BGR minus mean -> loc [N,P,4], conf [N,P,2] (softmax), landms [N,P,10]."""
        feats = self.fpn(self.body(x))
        feats = [self.ssh1(feats[0]), self.ssh2(feats[1]), self.ssh3(feats[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, feats)], dim=1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, feats)], dim=1)
        landms = torch.cat([h(f) for h, f in zip(self.LandmarkHead, feats)], dim=1)
        return loc, F.softmax(conf, dim=-1), landms


# ----------------------------------------------------------------------------------------------------------
# Checkpoint loading

def _read_state_dict(path: Path) -> dict:
    """torch.load a .pth, or the single member of a plain .zip (ternaus/retinaface release format)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            # A torch-saved file is itself a zip (many members: data.pkl, data/0, ...); a release zip wraps one file.
            if len(members) == 1:
                return torch.load(io.BytesIO(zf.read(members[0])), map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def _strip_prefixes(sd: dict) -> dict:
    for prefix in ("module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _infer_network(sd: dict) -> str | None:
    if any(k.startswith("body.stage1.") for k in sd):
        return "mobilenet0.25"
    if any(k.startswith(("body.layer1.", "body.conv1.")) for k in sd):
        return "resnet50"
    return None


def _short(keys: list[str], n: int = 12) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """For inference: every Conv2d directly followed by its BatchNorm2d (in an nn.Sequential, or as a module's
    ``conv``/``bn`` pair) becomes one Conv2d with the BN folded in (torch's ``fuse_conv_bn_eval``). Same outputs
    up to float rounding; the BN pass over every feature map is gone. In place; the model must be in eval mode."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for m in list(model.modules()):
        if isinstance(m, nn.Sequential):
            for i in range(len(m) - 1):
                if isinstance(m[i], nn.Conv2d) and isinstance(m[i + 1], nn.BatchNorm2d):
                    m[i], m[i + 1] = fuse_conv_bn_eval(m[i], m[i + 1]), nn.Identity()
        elif isinstance(getattr(m, "conv", None), nn.Conv2d) and isinstance(getattr(m, "bn", None), nn.BatchNorm2d):
            m.conv, m.bn = fuse_conv_bn_eval(m.conv, m.bn), nn.Identity()
    return model


def onednn_pointwise(model: nn.Module) -> nn.Module:
    """For CPU inference in channels_last: every 1x1, stride-1 convolution goes through oneDNN. Below a batch of 16,
    PyTorch sends them to its im2col path instead (``torch._C._select_conv_backend``: Slow2d), ~1.4x slower on
    this model's maps (8 x 8 x 180 x 320 -> 16 channels, one thread: 10.3 -> 3.5 ms) and, as measured on them, the
    same numbers up to float rounding (the detector's outputs within 6e-6). In place; other devices and dtypes take the usual path."""
    import types

    def forward(self, x):
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
            return self._conv_forward(x, self.weight, self.bias)
        return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, [0, 0], [1, 1], [1, 1], 1)

    for m in model.modules():
        if (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1
                and m.padding == (0, 0) and m.dilation == (1, 1) and m.padding_mode == "zeros"):
            m.forward = types.MethodType(forward, m)
    return model


def onednn_activations(model: nn.Module) -> nn.Module:
    """For CPU inference in channels_last: a Conv2d directly followed by its ReLU or LeakyReLU in an nn.Sequential
    (BN folded into the conv first: ``fuse_conv_bn`` leaves an nn.Identity between them) becomes one oneDNN
    convolution with the activation as its post-op (``torch.ops.mkldnn._convolution_pointwise``, the kernel
    torch.compile fuses the same pair into). One pass over each feature map instead of two; bitwise the same outputs
    as without it (tests/test_retinaface.py). Other devices, dtypes and grad mode run the conv, then the activation. In place;
    apply after ``onednn_pointwise``, whose 1x1 convolutions it takes over where an activation follows. A torch build
    without oneDNN (or without that op) gets the model back as it was."""
    import types

    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_convolution_pointwise"):
        return model

    def forward(self, x):
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_grad_enabled():
            return F.leaky_relu(self._conv_forward(x, self.weight, self.bias), self.slope)
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, list(self.padding),
                                                       list(self.stride), list(self.dilation), self.groups,
                                                       "leaky_relu", [self.slope], "")

    for m in model.modules():
        if not isinstance(m, nn.Sequential):
            continue
        for i in range(len(m)):
            j = next((j for j in range(i + 1, len(m)) if not isinstance(m[j], nn.Identity)), None)
            if (isinstance(m[i], nn.Conv2d) and m[i].padding_mode == "zeros" and isinstance(m[i].padding, tuple)
                    and j is not None and isinstance(m[j], (nn.ReLU, nn.LeakyReLU))):
                m[i].slope = float(getattr(m[j], "negative_slope", 0.0))
                m[i].forward = types.MethodType(forward, m[i])
                m[j] = nn.Identity()
    return model


def load_retinaface(path: str | Path, network: str | None = None) -> RetinaFace:
    """Build a RetinaFace and load a checkpoint strictly; `network` is inferred from the keys if None."""
    path = Path(path)
    try:
        sd = _read_state_dict(path)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read as a torch checkpoint: {e}") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise ValueError(f"{path}: not a RetinaFace state_dict")
    sd = _strip_prefixes(sd)
    network = network or _infer_network(sd)
    if network is None:
        raise ValueError(f"{path}: cannot tell the RetinaFace backbone from its keys (e.g. {_short(list(sd), 3)})")
    model = RetinaFace(network)
    want = model.state_dict()
    missing = [k for k in want if k not in sd and not k.endswith("num_batches_tracked")]  # BN counters unused
    unexpected = [k for k in sd if k not in want]
    shape = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in want.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shape:
        parts = [f"missing keys: {_short(missing)}" if missing else "",
                 f"unexpected keys: {_short(unexpected)}" if unexpected else "",
                 f"wrong-shape keys: {_short(shape)}" if shape else ""]
        raise ValueError(f"{path}: checkpoint does not fit RetinaFace-{network}; " + "; ".join(p for p in parts if p))
    for k in want:  # fill BN counters a checkpoint may lack, then load strictly
        sd.setdefault(k, want[k])
    model.load_state_dict(sd, strict=True)
    return model.eval()


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
    own because importing torchvision costs the face actor ~1.7 s of start-up on 2 cores (it imports
    torch._dynamo), and a frame has a few tens of candidates (tests/test_retinaface.py checks it against
    torchvision's)."""
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
        # BN folded into the convolutions, channels_last: the same network, about 2.5x faster on CPU. The first
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
            x = x.view(len(x), -1).sub_(self.flat_mean(*size)).view(x.shape)  # one flat pass: ~5x a [3] broadcast
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
        # large temporaries on the heap and kept it from shrinking (the face actor grew ~2 MB per video-second)
        return {
            "bbox": boxes.float().cpu().numpy().reshape(-1, 4).copy(),
            "score": scores.float().cpu().numpy().reshape(-1).copy(),
            "kps5": points.float().cpu().numpy().reshape(-1, 10).copy(),
        }
