"""Segmentation datasets: CamVid (SegNet layout), Cityscapes (official layout), image+label
folders.

Every dataset is a list of (image, label) file pairs, a 256-entry lookup table from the file's
label values to train ids (``ignore_index`` for unlabelled pixels), and optional paired
transforms. Label values that are neither a class nor ignored are an error naming the file: a
silently wrong label map trains a silently wrong model.

``dataset[i]`` applies the transforms with fresh randomness; ``dataset[(i, seed)]`` applies them
with ``numpy.random.default_rng(seed)``, which is how the training sampler makes augmentation
reproducible and independent of worker processes (see :mod:`dfanet_core.data.samplers`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from ..files import IMAGE_SUFFIXES
from ..imaging import read_image, read_label
from .info import (
    CAMVID,
    CAMVID_VOID_LABEL,
    CITYSCAPES,
    CITYSCAPES_LABELID_TO_TRAINID,
    IGNORE_INDEX,
    DatasetInfo,
    generic_info,
)

INVALID = -1  # lookup-table value of a label that is neither a class nor ignored

Transform = Callable[..., Any]
SampleKey = int | tuple[int, Any]


class DatasetError(ValueError):
    """A dataset folder that is missing, empty, inconsistent, or holds invalid labels."""


def identity_lut(num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Values ``0..num_classes-1`` and ``ignore_index`` are valid and kept; others invalid."""
    lut = np.full(256, INVALID, np.int16)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_index] = ignore_index
    return lut


class SegmentationDataset(Dataset):
    """(image, label) file pairs plus a label lookup table; returns RGB uint8 and train-id uint8
    arrays, or whatever ``transforms(image, label, rng=...)`` makes of them."""

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path]],
        info: DatasetInfo,
        label_lut: np.ndarray,
        transforms: Transform | None = None,
        description: str = "",
    ):
        if label_lut.shape != (256,):
            raise ValueError(f"label_lut must have 256 entries, got shape {label_lut.shape}")
        self.pairs = list(pairs)
        self.info = info
        self.label_lut = label_lut.astype(np.int16)
        self.transforms = transforms
        self.description = description
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.pairs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description or self.info.name}, {len(self)} pairs)"

    @property
    def stems(self) -> list[str]:
        """Image file names without suffix, in dataset order."""
        return [image.stem for image, _ in self.pairs]

    def cache_in_memory(self) -> SegmentationDataset:
        """Decode and validate every pair now and keep the arrays (about 0.7 MB per 480x360
        pair), so that epochs stop paying for PNG decoding. Call it before the DataLoader
        starts: forked worker processes then share the arrays instead of decoding their own.
        The cached arrays are read-only, so a transform that edits in place fails loudly
        instead of corrupting later epochs."""
        cache = {}
        for i in range(len(self)):
            image, label = self.load(i)
            image.flags.writeable = label.flags.writeable = False
            cache[i] = (image, label)
        self._cache = cache
        return self

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The untransformed pair: RGB uint8 (H, W, 3) and train ids uint8 (H, W)."""
        if self._cache and index in self._cache:
            return self._cache[index]
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = self.load_label(index)
        if label.shape != image.shape[:2]:
            raise DatasetError(
                f"label {label_path} is {label.shape[1]}x{label.shape[0]} but image {image_path} "
                f"is {image.shape[1]}x{image.shape[0]}; they must have the same size"
            )
        return image, label

    def load_label(self, index: int) -> np.ndarray:
        """The train ids (H, W) uint8 alone, without decoding the image."""
        if self._cache and index in self._cache:
            return self._cache[index][1]
        label_path = self.pairs[index][1]
        return self.map_label(read_label(label_path), label_path)

    def map_label(self, raw: np.ndarray, source: os.PathLike | str = "<array>") -> np.ndarray:
        """File label values -> train ids; invalid values raise naming ``source``."""
        mapped = self.label_lut[raw]
        if (mapped == INVALID).any():
            bad = np.unique(raw[mapped == INVALID])
            valid = np.flatnonzero(self.label_lut != INVALID)
            raise DatasetError(
                f"label file {source} has values {bad.tolist()[:10]} outside the valid set "
                f"for {self.info.name} ({_ranges(valid)}; {self.info.num_classes} classes, "
                f"ignore {self.info.ignore_index})"
            )
        return mapped.astype(np.uint8)

    def __getitem__(self, key: SampleKey):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.load(index)
        if self.transforms is None:
            return image, label
        rng = np.random.default_rng(seed) if seed is not None else None
        return self.transforms(image, label, rng=rng)

    def subset(self, count: int) -> SegmentationDataset:
        """The first ``count`` pairs (name order), e.g. for a quick overfit run."""
        if count < 1:
            raise ValueError(f"subset count must be >= 1, got {count}")
        clone = copy.copy(self)
        clone.pairs = self.pairs[:count]
        if self._cache is not None:
            clone._cache = {i: self._cache[i] for i in range(min(count, len(self)))}
        return clone


def _ranges(values: np.ndarray) -> str:
    """[0,1,2,3,11,255] -> '0-3, 11, 255' for error messages."""
    parts, start, prev = [], None, None
    for v in values.tolist() + [None]:
        if start is None:
            start = prev = v
        elif v is not None and v == prev + 1:
            prev = v
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = v
    return ", ".join(parts)


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what} not found: {path}")
    return path


def _split_names(split: str) -> list[str]:
    """'train+val' -> ['train', 'val'] (CamVid is often trained on train+val)."""
    names = [s for s in split.split("+") if s]
    if not names:
        raise DatasetError(f"empty split name {split!r}")
    return names


def _pair_by_stem(
    images: list[Path], label_for: Callable[[Path], Path], image_dir: Path, label_hint: str
) -> list[tuple[Path, Path]]:
    """Pair every image with its label file; unpaired images are an error naming them."""
    if not images:
        raise DatasetError(f"no images found in {image_dir} (expected {label_hint})")
    pairs = [(image, label_for(image)) for image in sorted(images)]
    missing = [image.name for image, label in pairs if not label.is_file()]
    if missing:
        raise DatasetError(
            f"{len(missing)} of {len(pairs)} images in {image_dir} have no label file "
            f"(e.g. {missing[:3]}); expected {label_hint}"
        )
    return pairs


def _image_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


class CamVidDataset(SegmentationDataset):
    """SegNet CamVid: ``root/{split}/*.png`` with labels ``root/{split}annot/<same name>``.
    11 classes; label 11 (void) becomes ``ignore_index`` (255). Images may also be JPEG or any
    :data:`IMAGE_SUFFIXES` file (a recompressed copy, say); labels are always ``<stem>.png``."""

    SPLITS = ("train", "val", "test")

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms=None):
        root = _require_dir(Path(root), "CamVid root folder")
        pairs: list[tuple[Path, Path]] = []
        for name in _split_names(split):
            if name not in self.SPLITS:
                raise DatasetError(f"unknown CamVid split {name!r}; valid: {self.SPLITS}")
            image_dir = _require_dir(
                root / name, f"CamVid {name} images folder (SegNet layout root/{name}/*.png)"
            )
            label_dir = _require_dir(
                root / f"{name}annot", f"CamVid {name} labels folder (root/{name}annot/*.png)"
            )
            pairs += _pair_by_stem(
                _image_files(image_dir),
                lambda p, d=label_dir: d / f"{p.stem}.png",
                image_dir,
                f"*.png images each with a same-named label PNG in {label_dir}",
            )
        lut = identity_lut(CAMVID.num_classes, CAMVID.ignore_index)
        lut[CAMVID_VOID_LABEL] = CAMVID.ignore_index
        super().__init__(pairs, CAMVID, lut, transforms, f"camvid {split} at {root}")


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations in the official layout:
    ``leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png`` and
    ``gtFine/{split}/{city}/{stem}_gtFine_labelIds.png``. labelIds 0..33 map to the 19 train ids
    through :data:`CITYSCAPES_LABELID_TO_TRAINID` (non-evaluated ids -> 255); other values are
    invalid."""

    SPLITS = ("train", "val", "test")
    IMAGE_SUFFIX = "_leftImg8bit.png"
    LABEL_SUFFIX = "_gtFine_labelIds.png"

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms=None):
        root = _require_dir(Path(root), "Cityscapes root folder")
        pairs: list[tuple[Path, Path]] = []
        for name in _split_names(split):
            if name not in self.SPLITS:
                raise DatasetError(f"unknown Cityscapes split {name!r}; valid: {self.SPLITS}")
            image_dir = _require_dir(
                root / "leftImg8bit" / name,
                f"Cityscapes images folder (leftImg8bit/{name}/<city>/*{self.IMAGE_SUFFIX})",
            )
            label_dir = _require_dir(
                root / "gtFine" / name,
                f"Cityscapes labels folder (gtFine/{name}/<city>/*{self.LABEL_SUFFIX})",
            )
            pairs += _pair_by_stem(
                list(image_dir.glob(f"*/*{self.IMAGE_SUFFIX}")),
                lambda p, d=label_dir: d / p.parent.name / self.label_name(p),
                image_dir,
                f"<city>/*{self.IMAGE_SUFFIX} images with labels "
                f"{label_dir}/<city>/*{self.LABEL_SUFFIX}",
            )
        lut = np.full(256, INVALID, np.int16)
        lut[: len(CITYSCAPES_LABELID_TO_TRAINID)] = CITYSCAPES_LABELID_TO_TRAINID
        super().__init__(pairs, CITYSCAPES, lut, transforms, f"cityscapes {split} at {root}")

    @classmethod
    def label_name(cls, image: Path) -> str:
        return image.name[: -len(cls.IMAGE_SUFFIX)] + cls.LABEL_SUFFIX

    @property
    def stems(self) -> list[str]:
        """``<city>_<seq>_<frame>``, the name the official evaluator matches predictions by."""
        return [image.name[: -len(self.IMAGE_SUFFIX)] for image, _ in self.pairs]


class FolderDataset(SegmentationDataset):
    """Any images folder plus a labels folder of same-stem PNGs holding train ids directly
    (``0..num_classes-1``, ``ignore_index`` for unlabelled pixels)."""

    def __init__(
        self,
        image_dir: str | os.PathLike,
        label_dir: str | os.PathLike,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        transforms=None,
        ignore_index: int = IGNORE_INDEX,
        name: str = "folder",
    ):
        image_dir = _require_dir(Path(image_dir), "images folder")
        label_dir = _require_dir(Path(label_dir), "labels folder")
        info = generic_info(name, num_classes, class_names, ignore_index)
        pairs = _pair_by_stem(
            _image_files(image_dir),
            lambda p: label_dir / f"{p.stem}.png",
            image_dir,
            f"images ({', '.join(IMAGE_SUFFIXES)}) each with a label {label_dir}/<stem>.png",
        )
        lut = identity_lut(num_classes, ignore_index)
        super().__init__(pairs, info, lut, transforms, f"{name} {image_dir}")


def _build_folder(root: Path, split: str, transforms, **kwargs) -> FolderDataset:
    """``root/images/{split}`` + ``root/labels/{split}`` (``split=''``: root/images|labels)."""
    if "num_classes" not in kwargs:
        raise DatasetError("the 'folder' dataset needs num_classes")
    return FolderDataset(
        root / "images" / split, root / "labels" / split, transforms=transforms, **kwargs
    )


DATASETS: dict[str, Callable[..., SegmentationDataset]] = {
    "camvid": lambda root, split, transforms: CamVidDataset(root, split, transforms),
    "cityscapes": lambda root, split, transforms: CityscapesDataset(root, split, transforms),
    "folder": _build_folder,
}


def build_dataset(
    name: str,
    root: str | os.PathLike,
    split: str,
    transforms: Transform | None = None,
    **kwargs: Any,
) -> SegmentationDataset:
    """Create a dataset by name (``camvid``, ``cityscapes``, ``folder``). ``folder`` takes
    ``num_classes`` (and optional ``class_names``, ``ignore_index``) as keyword arguments."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    if name != "folder" and kwargs:
        raise DatasetError(f"dataset {name!r} takes no extra arguments, got {sorted(kwargs)}")
    return DATASETS[name](Path(root), split, transforms, **kwargs)


def dataset_info(name: str, **kwargs: Any) -> DatasetInfo:
    """The :class:`DatasetInfo` of a named dataset without touching the disk."""
    if name == "camvid":
        return CAMVID
    if name == "cityscapes":
        return CITYSCAPES
    if name == "folder":
        return generic_info("folder", **kwargs)
    raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
