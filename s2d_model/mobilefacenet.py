"""MobileFaceNet 68-point landmark regressor (cunjian/pytorch_face_landmark layout).

S2D's frozen landmark branch is this network stopped after ``conv_4``: a [N, 128, 14, 14] feature map
for a 112x112 input. The module and parameter names reproduce the released checkpoint
(``mobilefacenet_model_best.pth.tar``: ``{"state_dict": ...}``, 333 keys, no ``module.`` prefix) so it
loads strictly.

Stages for a 112x112 input (channels, spatial size after the stage):
    conv1 (64, 56) -> conv2_dw (64, 56) -> conv_23 (64, 28) -> conv_3 (64, 28, 4 residual blocks)
    -> conv_34 (128, 14) -> conv_4 (128, 14, 6 blocks) [feature tap] -> conv_45 (128, 7)
    -> conv_5 (128, 7, 2 blocks) -> conv_6_sep (512, 7) -> output_layer (GDC: 7x7 depthwise, linear 136)
"""
from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """conv (no bias) -> BatchNorm -> PReLU; ``linear=True`` drops the PReLU."""

    def __init__(self, in_c: int, out_c: int, kernel=1, stride=1, padding=0, groups=1, linear=False):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = None if linear else nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1x1 expand to ``hidden`` -> 3x3 depthwise (stride) -> 1x1 linear project."""

    def __init__(self, in_c: int, out_c: int, hidden: int, stride: int = 2, residual: bool = False):
        super().__init__()
        self.conv = ConvBlock(in_c, hidden)
        self.conv_dw = ConvBlock(hidden, hidden, 3, stride, 1, groups=hidden)
        self.project = ConvBlock(hidden, out_c, linear=True)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, c: int, num_block: int, hidden: int):
        super().__init__()
        self.model = nn.Sequential(*[DepthWise(c, c, hidden, stride=1, residual=True) for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GDC(nn.Module):
    """Global depthwise conv head: [N, 512, 7, 7] -> [N, out]."""

    def __init__(self, out: int):
        super().__init__()
        self.conv_6_dw = ConvBlock(512, 512, 7, 1, 0, groups=512, linear=True)
        self.linear = nn.Linear(512, out, bias=False)
        self.bn = nn.BatchNorm1d(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.conv_6_dw(x).flatten(1)))


class MobileFaceNet(nn.Module):
    """``MobileFaceNet([112, 112], 136)``: 68 (x, y) pairs in [0, 1] of the crop, plus the conv_4 map."""

    def __init__(self, input_size=(112, 112), num_outputs: int = 136):
        super().__init__()
        if tuple(input_size) != (112, 112):
            raise ValueError(f"MobileFaceNet takes 112x112 inputs, got {tuple(input_size)}")
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBlock(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = DepthWise(64, 64, hidden=128)
        self.conv_3 = Residual(64, 4, hidden=128)
        self.conv_34 = DepthWise(64, 128, hidden=256)
        self.conv_4 = Residual(128, 6, hidden=256)
        self.conv_45 = DepthWise(128, 128, hidden=512)
        self.conv_5 = Residual(128, 2, hidden=256)
        self.conv_6_sep = ConvBlock(128, 512)
        self.output_layer = GDC(num_outputs)

    def forward_conv4(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, 112, 112] -> conv_4 features [N, 128, 14, 14] (what S2D's landmark branch uses)."""
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        return self.conv_4(self.conv_34(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, 112, 112] -> (landmarks [N, 136], conv_4 features [N, 128, 14, 14])."""
        feat = self.forward_conv4(x)
        x = self.conv_6_sep(self.conv_5(self.conv_45(feat)))
        return self.output_layer(x), feat
