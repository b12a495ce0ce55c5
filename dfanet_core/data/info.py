"""Dataset descriptions: class names, colours, ignore value and input normalization.

One :class:`DatasetInfo` per dataset is the single source of these facts; training copies it into
the checkpoint metadata (:meth:`DatasetInfo.meta`) so every consumer of a model (evaluation, the
ROS node, bag replay) sees the same names and colours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# ImageNet statistics (RGB, 0..1 scale). The paper only says "mean subtraction"; the backbones
# are ImageNet-pretrained (Sec. 4.1.1), so the ImageNet mean/std is the natural normalization.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


@dataclass(frozen=True)
class DatasetInfo:
    """What a model trained on a dataset needs to know about it. Labels are train ids
    ``0..num_classes-1`` after the dataset's mapping; ``ignore_index`` marks unlabelled pixels."""

    name: str
    class_names: tuple[str, ...]
    # One [r, g, b] per class, for visualisation only.
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"dataset {self.name!r}: {len(self.class_names)} class names but "
                f"{len(self.palette)} palette colours"
            )
        if 0 <= self.ignore_index < len(self.class_names):
            raise ValueError(
                f"dataset {self.name!r}: ignore_index {self.ignore_index} collides with a class id"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @staticmethod
    def sequence_of(stem: str) -> str:
        """The recording an image belongs to, from its file stem: the CamVid sequence
        (``Seq05VD_f00000`` -> ``Seq05VD``, ``0001TP_006690`` -> ``0001TP``), the Cityscapes city
        (``aachen_000000_000019`` -> ``aachen``); per-sequence scores group by it."""
        return stem.split("_", 1)[0]

    def meta(self) -> dict[str, Any]:
        """The dataset part of a checkpoint's metadata (see ``dfanet_core.save_checkpoint``)."""
        return {
            "dataset": self.name,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "palette": [list(c) for c in self.palette],
            "ignore_index": self.ignore_index,
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": "RGB",
        }


def generic_info(
    name: str,
    num_classes: int,
    class_names: list[str] | tuple[str, ...] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> DatasetInfo:
    """Info for a dataset without a registry entry: ``class_<i>`` names, the VOC-style palette."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    names = tuple(class_names) if class_names else tuple(f"class_{i}" for i in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names given for num_classes={num_classes}")
    return DatasetInfo(name, names, voc_palette(num_classes), ignore_index)


def voc_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """The bit-interleaved Pascal VOC colour map: distinct, deterministic colours for any count."""
    colours = []
    for i in range(num_classes):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append((r, g, b))
    return tuple(colours)


# CamVid, SegNet 11-class release (../shared/data/camvid/README.md): label 11 = void -> ignore.
CAMVID = DatasetInfo(
    name="camvid",
    class_names=(
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    ),
    palette=(
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),
)
CAMVID_VOID_LABEL = 11

# Cityscapes labelIds 0..33 -> the 19 train ids (cityscapesScripts helpers/labels.py); 255 for
# every id that is not evaluated (unlabeled, ego vehicle, ..., trailer). license plate (-1) never
# occurs in labelIds images.
CITYSCAPES_LABELID_TO_TRAINID: tuple[int, ...] = (
    255, 255, 255, 255, 255, 255, 255,  # 0-6: unlabeled .. ground
    0, 1, 255, 255,  # 7 road, 8 sidewalk, 9 parking, 10 rail track
    2, 3, 4, 255, 255, 255,  # 11 building, 12 wall, 13 fence, 14-16 guard rail/bridge/tunnel
    5, 255, 6, 7,  # 17 pole, 18 polegroup, 19 traffic light, 20 traffic sign
    8, 9, 10, 11, 12, 13, 14, 15,  # 21 vegetation .. 28 bus
    255, 255, 16, 17, 18,  # 29 caravan, 30 trailer, 31 train, 32 motorcycle, 33 bicycle
)  # fmt: skip

CITYSCAPES = DatasetInfo(
    name="cityscapes",
    class_names=(
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ),
    palette=(
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ),
)


def cityscapes_trainid_to_labelid() -> np.ndarray:
    """A 256-entry uint8 table train id -> Cityscapes labelId (255 -> 0 'unlabeled'), used to
    export predictions in the format of the official evaluator."""
    table = np.zeros(256, np.uint8)
    for label_id, train_id in enumerate(CITYSCAPES_LABELID_TO_TRAINID):
        if train_id != IGNORE_INDEX:
            table[train_id] = label_id
    return table
