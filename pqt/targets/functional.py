"""Running any ``nn.Module`` with a flat vector of generated weights.

:func:`functional_forward` runs a target through ``torch.func.functional_call`` with its parameters
replaced by slices of the generated vector, so the module's own parameters are never trained or
touched. The flat order is ``named_parameters`` order, which is ``state_dict`` order for plain
modules (conv1.weight, conv1.bias, conv2.weight, ...): the order both papers fill their networks in.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unflatten(module: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a flat weight vector into the module's parameters, in ``named_parameters`` order."""
    params: dict[str, torch.Tensor] = {}
    offset = 0
    for name, p in module.named_parameters():
        params[name] = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    if offset != flat.numel():
        raise ValueError(f"flat weight vector has {flat.numel()} values, target needs {offset}")
    return params


def channels_last_applies(module: nn.Module, images: torch.Tensor) -> bool:
    """Whether a convolutional target should see its images in channels-last layout.

    On the CPU, oneDNN's convolutions and max_pool2d are 2-2.5x faster on NHWC images than on NCHW
    ones for the CIFAR-10 CNN (measured: the 1,000-image loss 466 ms instead of 1,149, one thread);
    the result is the same function (float32 summation order aside). The paper CNN has its own path.
    """
    return (images.dim() == 4 and images.device.type == "cpu"
            and any(isinstance(m, nn.Conv2d) for m in module.modules()))


def functional_forward(module: nn.Module, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Run ``module`` on ``x`` with its parameters replaced by the generated ``flat`` weights."""
    return torch.func.functional_call(module, unflatten(module, flat), (x,))


@torch.inference_mode()
def loss_and_accuracy(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
                      device: torch.device | str = "cpu", chunk: int = 2000) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``forward`` (images -> logits) over a dataset, in chunks."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(labels), chunk):
        x = images[start : start + chunk].to(device)
        y = labels[start : start + chunk].to(device)
        logits = forward(x)
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return total_loss / len(labels), correct / len(labels)


def predicted_labels(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                     device: torch.device | str = "cpu", chunk: int = 2000) -> torch.Tensor:
    """The most probable class of every image (int64, on the CPU), in chunks."""
    return torch.cat([forward(images[start : start + chunk].to(device)).argmax(1).cpu()
                      for start in range(0, len(images), chunk)])
