"""Datasets: MNIST, Fashion-MNIST, CIFAR-10, the Perceval Quest CSVs, the offline partial-MNIST
protocol (:mod:`.datasets`), and the image files ``pqt predict`` reads (:mod:`.images`)."""

from pqt.data.datasets import (
    DATASETS,
    ENV_VAR,
    Dataset,
    DataSource,
    class_names,
    find_shared_data_dir,
    input_shape_of,
    load_dataset,
    locate_dataset,
    read_idx,
    read_quest_csv,
    resolve_data_dir,
    training_splits,
)
from pqt.data.images import PreparedImages, load_images, prepare_images

__all__ = ["DATASETS", "ENV_VAR", "DataSource", "Dataset", "PreparedImages", "class_names", "find_shared_data_dir",
           "input_shape_of", "load_dataset", "load_images", "locate_dataset", "prepare_images", "read_idx",
           "read_quest_csv", "resolve_data_dir", "training_splits"]
