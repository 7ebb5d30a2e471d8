"""Datasets: MNIST, Fashion-MNIST, CIFAR-10, the Perceval Quest CSVs, the offline partial-MNIST
protocol, and the image files ``pqt predict`` reads."""

from pqt.data.datasets import (
    DATASETS,
    ENV_VAR,
    Dataset,
    DataSource,
    find_shared_data_dir,
    input_shape_of,
    load_dataset,
    load_images,
    locate_dataset,
    read_idx,
    read_quest_csv,
    resolve_data_dir,
    training_splits,
)

__all__ = ["DATASETS", "ENV_VAR", "DataSource", "Dataset", "find_shared_data_dir", "input_shape_of", "load_dataset",
           "load_images", "locate_dataset", "read_idx", "read_quest_csv", "resolve_data_dir", "training_splits"]
