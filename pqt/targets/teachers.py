"""Distillation teachers: high-capacity classical networks, trained once per dataset (``pqt teacher``).

- ``teacher-cnn`` (28x28 images; any size divisible by 4): Conv(C->32, 3) -> ReLU -> MaxPool2 ->
  Conv(32->64, 3) -> ReLU -> MaxPool2 -> Linear(64*H/4*W/4 -> 32) -> ReLU -> Linear(32 -> 10):
  119,530 parameters on 1x28x28 images (3.8 M multiply-adds per image).
- ``teacher-resnet`` (CIFAR-10): a small ResNet: a 3x3 stem of 32 channels, three basic residual blocks
  (32, 64 with stride 2, 128 with stride 2), global average pooling, Linear(128 -> 10); 308,650
  parameters. GroupNorm instead of BatchNorm: it keeps no running statistics, so the network is its
  parameters alone (what the classical-training loop of :mod:`pqt.studies.baselines` trains and saves).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pqt.errors import UserError
from pqt.targets.registry import NUM_CLASSES, register_target

GROUPS = 8  # GroupNorm groups


class TeacherCNN(nn.Module):
    def __init__(self, input_shape: tuple[int, ...] = (1, 28, 28)) -> None:
        super().__init__()
        c, h, w = input_shape
        if h % 4 or w % 4:
            raise UserError(f"teacher-cnn takes images whose sides divide by 4 (got {h}x{w}); use teacher-resnet")
        self.conv1 = nn.Conv2d(c, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * (h // 4) * (w // 4), 32)
        self.fc2 = nn.Linear(32, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(GROUPS, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(GROUPS, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.GroupNorm(GROUPS, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class TeacherResNet(nn.Module):
    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.GroupNorm(GROUPS, widths[0]), nn.ReLU())
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(c, w, 1 if i == 0 else 2))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


@register_target("teacher-cnn", input_shape=None, default_activation="relu",
                 description="distillation teacher for 28x28 images, 119,530 parameters")
def teacher_cnn(input_shape: tuple[int, ...], activation: str) -> nn.Module:
    _relu_only("teacher-cnn", activation)
    return TeacherCNN(tuple(input_shape))


@register_target("teacher-resnet", input_shape=None, default_activation="relu",
                 description="distillation teacher for CIFAR-10, a small ResNet of 308,650 parameters")
def teacher_resnet(input_shape: tuple[int, ...], activation: str) -> nn.Module:
    _relu_only("teacher-resnet", activation)
    return TeacherResNet(input_shape[0])


def _relu_only(name: str, activation: str) -> None:
    if activation != "relu":
        raise UserError(f"{name} uses ReLU; leave --activation unset (got {activation!r})")
