"""The classical network whose weights the photonic QNNs generate.

Any ``nn.Module`` can be a target: :func:`functional_forward` runs it with a flat
vector of generated weights through ``torch.func.functional_call``, so the module's
own parameters are never trained or touched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda x: x,  # the paper's code: no activation anywhere
    "relu": F.relu,
    "tanh": torch.tanh,
    "gelu": F.gelu,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from pqt.errors import UserError

    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise UserError(
            f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}"
        ) from None


class PaperCNN(nn.Module):
    """The paper's MNIST CNN: 6,690 parameters.

    Conv(1->8, k5) -> MaxPool2 -> Conv(8->12, k5) -> MaxPool2 -> Linear(192->20) -> Linear(20->10).
    ``activation`` is applied after each conv block and after fc1; the paper uses none.
    """

    def __init__(self, activation: str = "none") -> None:
        super().__init__()
        self.activation = activation
        self._act = activation_fn(activation)
        self.conv1 = nn.Conv2d(1, 8, kernel_size=5)
        self.conv2 = nn.Conv2d(8, 12, kernel_size=5)
        self.fc1 = nn.Linear(12 * 4 * 4, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._act(F.max_pool2d(self.conv1(x), 2))
        x = self._act(F.max_pool2d(self.conv2(x), 2))
        x = self._act(self.fc1(x.flatten(1)))
        return self.fc2(x)


def n_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unflatten(module: nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split a flat weight vector into the module's parameters, in ``named_parameters`` order.

    That is ``state_dict`` order for plain modules (conv1.weight, conv1.bias, conv2.weight, ...),
    the order the paper's code fills its CNN in.
    """
    params: dict[str, torch.Tensor] = {}
    offset = 0
    for name, p in module.named_parameters():
        params[name] = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    if offset != flat.numel():
        raise ValueError(f"flat weight vector has {flat.numel()} values, target needs {offset}")
    return params


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


def build_target(name: str = "paper-cnn", activation: str = "none") -> nn.Module:
    from pqt.errors import UserError

    if name == "paper-cnn":
        return PaperCNN(activation)
    raise UserError(f"unknown target {name!r}: the built-in target is 'paper-cnn'")
