"""The distilled student as a plain network: what ``pqt distill`` deploys, and the classical KD baseline.

``student-cnn``: for each width C_l, Conv2d(C_(l-1) -> C_l, k x k, 'same' padding) -> ReLU -> 2x2
max-pooling; then average pooling of the last map to G x G (``head_grid``; 1 = global average pooling),
flattened, and Linear(C_L G^2 -> 10). A PQKD run trains dictionary
convolutions (:mod:`pqt.distill.student`) and saves, as model.pt, this network's state_dict with the
kernels fixed from the final smoothed photonic features; ``--student plain`` trains this network's
kernels directly. Its shape comes from the run's config (``widths``, ``kernel_size``, ``head_grid``), so
``pqt evaluate`` rebuilds it without any quantum software.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pqt.errors import UserError
from pqt.targets.networks import activation_fn
from pqt.targets.registry import NUM_CLASSES, register_target


def check_depth(widths: Sequence[int], input_shape: Sequence[int]) -> None:
    """Each layer halves the image: refuse more layers than the image has halvings."""
    side = min(input_shape[1:])
    fit = max(1, side.bit_length() - 1)  # 28 -> 4 layers (28, 14, 7, 3 -> 1), 32 -> 5
    if len(widths) > fit:
        raise UserError(f"--widths: {len(widths)} conv layers, each halving the image, do not fit "
                        f"{side}x{side} images; give at most {fit} widths")


def head_input(x: torch.Tensor, grid: int) -> torch.Tensor:
    """The last feature map average-pooled to grid x grid and flattened: the linear head's input."""
    if grid == 1:
        return x.mean((2, 3))
    return F.adaptive_avg_pool2d(x, grid).flatten(1)


class StudentCNN(nn.Module):
    def __init__(self, in_channels: int, widths: Sequence[int], kernel_size: int = 3, head_grid: int = 3,
                 activation: str = "relu") -> None:
        super().__init__()
        self.activation = activation
        self._act = activation_fn(activation)
        self.head_grid = head_grid
        channels = [in_channels, *widths]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2)
                                   for a, b in zip(channels[:-1], channels[1:], strict=True))
        self.head = nn.Linear(channels[-1] * head_grid * head_grid, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.max_pool2d(self._act(conv(x)), 2)
        return self.head(head_input(x, self.head_grid))


@register_target("student-cnn", input_shape=None, default_activation="relu",
                 options=("widths", "kernel_size", "head_grid"),
                 description="a distilled student: conv layers of the given widths, pooled grid, linear head")
def student_cnn(input_shape: tuple[int, ...], activation: str, widths: Sequence[int] = (8, 16),
                kernel_size: int = 3, head_grid: int = 3) -> nn.Module:
    check_depth(widths, input_shape)
    return StudentCNN(input_shape[0], tuple(int(w) for w in widths), int(kernel_size), int(head_grid), activation)
