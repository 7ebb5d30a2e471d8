"""Target networks: the classical networks a generator's weights fill, and how to run them."""

from pqt.targets.functional import functional_forward, loss_and_accuracy, n_parameters, predicted_labels, unflatten
from pqt.targets.networks import ACTIVATIONS, CifarCNN, PaperCNN, SmallMLP, activation_fn
from pqt.targets.registry import (
    create_target,
    default_activation,
    is_user_target,
    register_target,
    registered_targets,
)

__all__ = ["ACTIVATIONS", "CifarCNN", "PaperCNN", "SmallMLP", "activation_fn", "create_target", "default_activation",
           "functional_forward", "is_user_target", "loss_and_accuracy", "n_parameters", "predicted_labels",
           "register_target",
           "registered_targets", "unflatten"]
