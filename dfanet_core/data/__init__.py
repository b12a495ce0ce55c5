"""Datasets, their class names/colours, paired transforms and samplers."""

from .datasets import (
    DATASETS,
    CamVidDataset,
    CityscapesDataset,
    DatasetError,
    FolderDataset,
    SegmentationDataset,
    build_dataset,
    dataset_info,
)
from .info import (
    CAMVID,
    CITYSCAPES,
    CITYSCAPES_LABELID_TO_TRAINID,
    IGNORE_INDEX,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetInfo,
    cityscapes_trainid_to_labelid,
    generic_info,
)
from .samplers import IterationSampler, ShardSampler

__all__ = [
    "CAMVID",
    "CITYSCAPES",
    "CITYSCAPES_LABELID_TO_TRAINID",
    "DATASETS",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CamVidDataset",
    "CityscapesDataset",
    "DatasetError",
    "DatasetInfo",
    "FolderDataset",
    "IterationSampler",
    "SegmentationDataset",
    "ShardSampler",
    "build_dataset",
    "cityscapes_trainid_to_labelid",
    "dataset_info",
    "generic_info",
]
