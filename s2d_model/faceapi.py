"""face-api.js's expression and face-recognition networks in PyTorch, loaded from their published tfjs weight files.

face-api.js (github.com/justadudewhohacks/face-api.js, MIT) ships each net as a tfjs weights manifest plus a
``.bin`` of (mostly uint8-quantised) tensors; ``read_tfjs`` reads that format directly and ``load_expression_net``
/ ``load_recognition_net`` map the tensors onto ``FaceExpressionNet`` / ``FaceRecognitionNet`` (no conversion step,
no TensorFlow). ``to_input`` is face-api's own preprocessing, so ``expression_probs`` and ``descriptors`` reproduce
the JavaScript outputs (``reference.json`` beside the weights holds them).

Expression net, for a 112x112 input (channels, spatial size after the stage):
    dense0 (32, 56) -> dense1 (64, 28) -> dense2 (128, 14) -> dense3 (256, 7)
    -> 7x7 average pool (256, 1) -> fc (7 logits, ``CLASSES`` order)
Every conv uses TF ``SAME`` padding; a stride-2 conv on an even input pads only bottom/right.

Recognition net (dlib's face-recognition ResNet, Davis King's weights), for a 150x150 input:
    conv32_down 7x7/2 VALID (32, 72) -> 3x3/2 VALID max pool (32, 35) -> conv32_1..3 (32, 35)
    -> conv64_down (64, 17) -> conv64_1..3 -> conv128_down (128, 8) -> conv128_1..2
    -> conv256_down (256, 4) -> conv256_1..2 -> conv256_down_out (256, 2) -> mean over H, W -> fc (128, no bias)
Stride-1 convs are TF ``SAME``, the stride-2 ones ``VALID``; see ``DownBlock`` for how the two branches of a
down-sampling block are made the same size.

Shapes: N crops, C channels, H x W pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .tfjs import WeightsFileError, data_files, read_tfjs_arrays  # noqa: F401  (re-exported)
from .tfjs import error as _error

CLASSES = ("neutral", "happy", "sad", "angry", "fearful", "disgusted", "surprised")  # face-api's output order
MEAN_RGB = (122.782, 117.001, 104.298)
INPUT_SIZE = 112  # the expression net's input side
RECOGNITION_INPUT_SIZE = 150
DESCRIPTOR_SIZE = 128


def read_tfjs(manifest: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a tfjs weights manifest (``tfjs.read_tfjs_arrays``) as float32 torch tensors in TF layout.
    Raises ``WeightsFileError`` on anything but face-api's format."""
    return {k: torch.from_numpy(v) for k, v in read_tfjs_arrays(manifest).items()}


# ----------------------------------------------------------------------------------------------------------------
# network

def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF ``SAME`` padding (before, after) of one dimension: output ceil(size / stride), the odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TF ``SAME`` padding. Stride 1 pads k // 2 inside the conv; stride 2 pads explicitly
    (on an even input the extra row/column goes bottom/right, which the conv's symmetric padding cannot do)."""

    def __init__(self, in_c: int, out_c: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = True):
        self.explicit_pad = stride != 1
        super().__init__(in_c, out_c, kernel, stride, 0 if self.explicit_pad else kernel // 2,
                         groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, in_c, H, W] -> [N, out_c, ceil(H/s), ceil(W/s)]
        if self.explicit_pad:
            top, bottom = tf_same_pads(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = tf_same_pads(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class SeparableConv(nn.Module):
    """TF ``separableConv2d`` + bias: 3x3 depthwise (stride, no bias) -> 1x1 pointwise with bias."""

    def __init__(self, in_c: int, out_c: int, stride: int = 1):
        super().__init__()
        self.depthwise = SameConv2d(in_c, in_c, 3, stride, groups=in_c, bias=False)
        self.pointwise = nn.Conv2d(in_c, out_c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, in_c, H, W] -> [N, out_c, H/s, W/s]
        return self.pointwise(self.depthwise(x))


class DenseBlock(nn.Module):
    """face-api's dense block: conv0 halves the size, then conv1..3 each see the ReLU of the sum of all earlier
    outputs; the block returns the ReLU of the sum of all four. ``plain_first``: conv0 is a plain 3x3 conv
    (the first block, on 3 input channels) instead of a separable one.

    [N, in_c, H, W] -> [N, out_c, H/2, W/2]
    """

    def __init__(self, in_c: int, out_c: int, plain_first: bool = False):
        super().__init__()
        self.conv0 = SameConv2d(in_c, out_c, 3, 2) if plain_first else SeparableConv(in_c, out_c, 2)
        self.conv1 = SeparableConv(out_c, out_c)
        self.conv2 = SeparableConv(out_c, out_c)
        self.conv3 = SeparableConv(out_c, out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place where autograd allows it (relu saves its output, add nothing): fewer large temporaries on CPU.
        total = F.relu_(self.conv0(x))
        total = total + self.conv1(total)  # not in place: conv1 keeps its input for backward
        total.add_(self.conv2(F.relu(total)))
        total.add_(self.conv3(F.relu(total)))
        return total.relu_()


class FaceExpressionNet(nn.Module):
    """face-api's faceExpressionNet: [N, 3, 112, 112] normalised RGB (see ``to_input``) -> [N, 7] logits in
    ``CLASSES`` order (face-api applies softmax to these)."""

    def __init__(self, num_classes: int = len(CLASSES)):
        super().__init__()
        self.dense0 = DenseBlock(3, 32, plain_first=True)
        self.dense1 = DenseBlock(32, 64)
        self.dense2 = DenseBlock(64, 128)
        self.dense3 = DenseBlock(128, 256)
        self.fc = nn.Linear(256, num_classes)
        # NHWC: oneDNN's depthwise convs on CPU are faster in channels_last than in NCHW.
        self.to(memory_format=torch.channels_last)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, 112, 112] -> pooled features [N, 256] (7x7 average pool, stride 2, no padding, as face-api)."""
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.dense3(self.dense2(self.dense1(self.dense0(x))))
        return F.avg_pool2d(x, 7, 2).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


# ----------------------------------------------------------------------------------------------------------------
# recognition network (dlib's face-recognition ResNet as face-api runs it)

class Scale(nn.Module):
    """dlib's affine layer (a batch norm frozen into a per-channel ``x * weight + bias``): [N, C, H, W] -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.bias.view(-1, 1, 1), x, self.weight.view(-1, 1, 1))


class ConvScale(nn.Module):
    """face-api's recognition ``convLayer``: conv + bias -> ``Scale`` -> ReLU (unless ``relu=False``).
    Stride 1 pads TF ``SAME`` (k // 2 on each side, k odd); stride 2 is ``VALID`` (no padding), as face-api's
    ``convDown``. [N, in_c, H, W] -> [N, out_c, H, W] (stride 1) or [N, out_c, (H - k) // 2 + 1, ...] (stride 2)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 3, stride: int = 1, relu: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, kernel // 2 if stride == 1 else 0)
        self.scale = Scale(out_c)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale(self.conv(x))
        return F.relu_(x) if self.relu else x


class ResidualBlock(nn.Module):
    """ReLU(x + conv2(conv1(x))), conv1 with ReLU, conv2 without; both 3x3, stride 1. [N, C, H, W] -> same."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvScale(channels, channels)
        self.conv2 = ConvScale(channels, channels, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu_(self.conv2(self.conv1(x)) + x)


class DownBlock(nn.Module):
    """face-api's ``residualDown``: the residual branch is conv1 (3x3, stride 2, ``VALID``, ReLU) -> conv2 (3x3,
    ``SAME``, no ReLU); the shortcut is a 2x2 stride-2 average pool of x with zero channels appended up to out_c.
    On an even input the residual branch comes out one pixel smaller than the pool ((H - 1) // 2 against H // 2):
    face-api appends a zero row at the bottom and a zero column at the right of it. Then ReLU of the sum.

    [N, in_c, H, W] -> [N, out_c, H // 2, W // 2]
    """

    def __init__(self, in_c: int, out_c: int):
        super().__init__()
        self.conv1 = ConvScale(in_c, out_c, stride=2)
        self.conv2 = ConvScale(out_c, out_c, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        shortcut = F.avg_pool2d(x, 2, 2)
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, out.shape[1] - x.shape[1]))  # zero channels after x's
        out = F.pad(out, (0, shortcut.shape[-1] - out.shape[-1], 0, shortcut.shape[-2] - out.shape[-2]))
        return F.relu_(out + shortcut)


class FaceRecognitionNet(nn.Module):
    """face-api's faceRecognitionNet (dlib's ResNet-29 face descriptor): [N, 3, 150, 150] normalised RGB (see
    ``to_input``) -> [N, 128] descriptors, compared by Euclidean distance (not L2-normalised)."""

    def __init__(self):
        super().__init__()
        self.conv32_down = ConvScale(3, 32, kernel=7, stride=2)
        self.conv32_1 = ResidualBlock(32)
        self.conv32_2 = ResidualBlock(32)
        self.conv32_3 = ResidualBlock(32)
        self.conv64_down = DownBlock(32, 64)
        self.conv64_1 = ResidualBlock(64)
        self.conv64_2 = ResidualBlock(64)
        self.conv64_3 = ResidualBlock(64)
        self.conv128_down = DownBlock(64, 128)
        self.conv128_1 = ResidualBlock(128)
        self.conv128_2 = ResidualBlock(128)
        self.conv256_down = DownBlock(128, 256)
        self.conv256_1 = ResidualBlock(256)
        self.conv256_2 = ResidualBlock(256)
        self.conv256_down_out = DownBlock(256, 256)
        self.fc = nn.Linear(256, DESCRIPTOR_SIZE, bias=False)
        self.to(memory_format=torch.channels_last)  # NHWC: oneDNN's CPU convs run ~25% faster here than in NCHW

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, 150, 150] -> features [N, 256, 2, 2] (before the mean over space)."""
        x = x.contiguous(memory_format=torch.channels_last)
        x = F.max_pool2d(self.conv32_down(x), 3, 2)
        x = self.conv32_3(self.conv32_2(self.conv32_1(x)))
        x = self.conv64_3(self.conv64_2(self.conv64_1(self.conv64_down(x))))
        x = self.conv128_2(self.conv128_1(self.conv128_down(x)))
        x = self.conv256_2(self.conv256_1(self.conv256_down(x)))
        return self.conv256_down_out(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))


# ----------------------------------------------------------------------------------------------------------------
# loading: state_dict keys -> tfjs tensor names

# state_dict key suffix -> (tfjs name suffix, permutation taking the TF layout to torch's), first match wins.
# TF layouts: conv [kh, kw, in, out], depthwise [kh, kw, C, 1], dense [in, out].
_TFJS_NAMES = (
    (".depthwise.weight", "/depthwise_filter", (2, 3, 0, 1)),
    (".pointwise.weight", "/pointwise_filter", (3, 2, 0, 1)),
    (".pointwise.bias", "/bias", None),
    ("fc.weight", "fc/weights", (1, 0)),
    (".weight", "/filters", (3, 2, 0, 1)),
    (".bias", "/bias", None),
)
_RECOGNITION_TFJS_NAMES = (
    ("fc.weight", "fc", (1, 0)),
    (".conv.weight", "/conv/filters", (3, 2, 0, 1)),
    (".conv.bias", "/conv/bias", None),
    (".scale.weight", "/scale/weights", None),
    (".scale.bias", "/scale/biases", None),
)


def tfjs_name(key: str, table=_TFJS_NAMES) -> tuple[str, tuple[int, ...] | None]:
    """state_dict key -> (tfjs tensor name, TF -> torch permutation or None), by ``table`` (default: the expression
    net's), e.g. ``dense1.conv2.depthwise.weight`` -> ``dense1/conv2/depthwise_filter``; with the recognition net's
    table ``conv64_1.conv2.scale.bias`` -> ``conv64_1/conv2/scale/biases``."""
    for suffix, tf_suffix, perm in table:
        if key.endswith(suffix):
            return (key[: len(key) - len(suffix)].replace(".", "/") + tf_suffix), perm
    raise KeyError(key)


def _load_tfjs(net: nn.Module, manifest: str | Path, table, net_name: str) -> nn.Module:
    """``net`` with the tensors of a tfjs manifest, mapped by ``table``, in eval mode. Raises ``WeightsFileError``
    (one line naming the file) on a missing, extra or wrongly shaped tensor, or anything ``read_tfjs`` refuses."""
    manifest = Path(manifest)
    tensors = read_tfjs(manifest)
    state = {}
    for key, param in net.state_dict().items():
        name, perm = tfjs_name(key, table)
        if name not in tensors:
            raise _error(manifest, f"missing tensor {name} (is this {net_name}'s manifest?)")
        value = tensors.pop(name)
        expected = list(param.shape)
        if perm is not None:
            expected = [0] * len(perm)
            for i, p in enumerate(perm):
                expected[p] = param.shape[i]
        if list(value.shape) != expected:
            raise _error(manifest, f"tensor {name} has shape {list(value.shape)}, expected {expected}")
        state[key] = value.permute(perm).contiguous() if perm is not None else value
    if tensors:
        raise _error(manifest, f"unknown tensors {sorted(tensors)} (not part of {net_name})")
    net.load_state_dict(state)
    return net.eval()


def load_expression_net(manifest: str | Path) -> FaceExpressionNet:
    """``FaceExpressionNet`` with face-api's weights (``face_expression_model-weights_manifest.json``), in eval
    mode. Raises ``WeightsFileError`` on a missing, extra or wrongly shaped tensor."""
    return _load_tfjs(FaceExpressionNet(), manifest, _TFJS_NAMES, "faceExpressionNet")


def load_recognition_net(manifest: str | Path) -> FaceRecognitionNet:
    """``FaceRecognitionNet`` with face-api's weights (``face_recognition_model-weights_manifest.json``), in eval
    mode. Raises ``WeightsFileError`` on a missing, extra or wrongly shaped tensor."""
    return _load_tfjs(FaceRecognitionNet(), manifest, _RECOGNITION_TFJS_NAMES, "faceRecognitionNet")


# ----------------------------------------------------------------------------------------------------------------
# preprocessing

def _legacy_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Legacy TF bilinear sampling of one axis: source = dest * in / out (float32, as TF), no half-pixel offset.
    -> (lower index, upper index, weight of upper), each [out_size]."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.arange(out_size, dtype=np.float32) * scale
    lower = np.floor(src)
    upper = np.minimum(np.ceil(src), in_size - 1)
    return torch.from_numpy(lower.astype(np.int64)), torch.from_numpy(upper.astype(np.int64)), \
        torch.from_numpy(src - lower)


def resize_bilinear_tf(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``tf.image.resizeBilinear(alignCorners=false, halfPixelCenters=false)``: [..., H, W] -> [..., height, width].

    Not ``F.interpolate(align_corners=False)``: that samples at (dest + 0.5) * in / out - 0.5 (half-pixel
    centres), legacy TF at dest * in / out (upper neighbour clamped to the last row/column), so the two grids
    are (in / out - 1) / 2 source pixels apart. Interpolates along x, then along y, as TF does.
    """
    y0, y1, wy = _legacy_taps(x.shape[-2], height)
    x0, x1, wx = _legacy_taps(x.shape[-1], width)
    left, right = x[..., x0], x[..., x1]
    x = left + (right - left) * wx
    top, bottom = x[..., y0, :], x[..., y1, :]
    return top + (bottom - top) * wy[:, None]


def pad_to_square(x: torch.Tensor) -> torch.Tensor:
    """face-api's centred ``padToSquare``: zeros on both sides of the short axis, the odd extra pixel
    bottom/right. [..., H, W] -> [..., S, S], S = max(H, W)."""
    h, w = x.shape[-2:]
    diff = abs(h - w)
    after = (diff + 1) // 2  # JS Math.round(diff / 2)
    before = diff - after
    return F.pad(x, (0, 0, before, after) if h < w else (before, after, 0, 0))


def to_input(crops: np.ndarray | list[np.ndarray], size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 RGB crops [N, H, W, 3] (or a list of [H, W, 3] of any sizes) -> net input float32 [N, 3, size, size].

    face-api's preprocessing: pad to a centred square with zeros, legacy-TF bilinear resize to size x size
    (skipped when already that size), subtract ``MEAN_RGB``, divide by 255.
    """
    if isinstance(crops, np.ndarray) and crops.ndim != 4:
        raise ValueError(f"crops must be [N, H, W, 3], got shape {crops.shape}")
    mean = torch.tensor(MEAN_RGB, dtype=torch.float32).view(3, 1, 1)
    out = torch.empty(len(crops), 3, size, size)
    for i, crop in enumerate(crops):
        crop = np.asarray(crop)
        if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or 0 in crop.shape:
            raise ValueError(f"crop {i}: expected uint8 RGB [H, W, 3], got {crop.dtype} {crop.shape}")
        x = pad_to_square(torch.from_numpy(crop.astype(np.float32)).permute(2, 0, 1))
        if x.shape[-1] != size:
            x = resize_bilinear_tf(x, size, size)
        out[i] = (x - mean) / 255.0
    return out


@torch.inference_mode()
def expression_probs(net: FaceExpressionNet, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """uint8 RGB crops (as ``to_input``) -> float32 [N, 7] softmax probabilities in ``CLASSES`` order."""
    if len(crops) == 0:
        return np.zeros((0, len(CLASSES)), np.float32)
    device = next(net.parameters()).device
    logits = net(to_input(crops).to(device))
    return F.softmax(logits.float(), dim=1).cpu().numpy()


@torch.inference_mode()
def descriptors(net: FaceRecognitionNet, crops: np.ndarray | list[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """uint8 RGB crops (as ``to_input``) -> float32 [N, 128] face descriptors, face-api's ``computeFaceDescriptor``:
    padded to a square, resized to 150x150, normalised; raw, not L2-normalised (compare by Euclidean distance).
    Runs ``batch_size`` crops at a time on the net's device."""
    device = next(net.parameters()).device
    out = np.zeros((len(crops), DESCRIPTOR_SIZE), np.float32)
    for start in range(0, len(crops), batch_size):
        x = to_input(crops[start:start + batch_size], RECOGNITION_INPUT_SIZE).to(device)
        out[start:start + len(x)] = net(x).float().cpu().numpy()
    return out
