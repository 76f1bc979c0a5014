"""Inference-only rewrites of a convolutional network for CPU: BatchNorm folded into its convolution, and
convolutions sent to oneDNN's kernels. Each gives the same outputs up to float rounding, works in place, and leaves
other devices, dtypes and grad mode on the usual path. Used by the face detector, the landmark nets and S2D's frozen
landmark branch."""
from __future__ import annotations

import types

import torch
import torch.nn as nn
import torch.nn.functional as F


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """Every Conv2d directly followed by its BatchNorm2d (in an nn.Sequential, or as a module's ``conv``/``bn``
    pair) becomes one Conv2d with the BN folded in (torch's ``fuse_conv_bn_eval``): the BN pass over every feature
    map is gone. The model must be in eval mode."""
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
    """In channels_last: every 1x1, stride-1 convolution goes through oneDNN. Below a batch of 16 PyTorch sends them
    to its slower im2col path instead (``torch._C._select_conv_backend``: Slow2d)."""

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
    """In channels_last: a Conv2d directly followed by its ReLU or LeakyReLU in an nn.Sequential (BN folded into the
    conv first: ``fuse_conv_bn`` leaves an nn.Identity between them) becomes one oneDNN convolution with the
    activation as its post-op (``torch.ops.mkldnn._convolution_pointwise``, the kernel torch.compile fuses the same
    pair into): one pass over each feature map instead of two, bitwise the same outputs. Apply after
    ``onednn_pointwise``, whose 1x1 convolutions it takes over where an activation follows. A torch build without
    oneDNN (or without that op) gets the model back as it was."""
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
