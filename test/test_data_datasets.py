"""Dataset loaders: real CamVid files, a generated Cityscapes tree, image+label folders, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _helpers import make_cityscapes_tree

from dfanet_core.data import (
    CAMVID,
    CITYSCAPES,
    CITYSCAPES_LABELID_TO_TRAINID,
    CamVidDataset,
    CityscapesDataset,
    DatasetError,
    FolderDataset,
    build_dataset,
    cityscapes_trainid_to_labelid,
)
from dfanet_core.data.transforms import eval_preset
from dfanet_core.imaging import read_label

# ---------------------------------------------------------------- CamVid (real files)


@pytest.mark.parametrize(("split", "count"), [("train", 367), ("val", 101), ("test", 233)])
def test_camvid_split_counts(camvid_root, split, count):
    dataset = build_dataset("camvid", camvid_root, split)
    assert len(dataset) == count
    assert dataset.info is CAMVID
    image_path, label_path = dataset.pairs[0]
    assert image_path.name == label_path.name and label_path.parent.name == f"{split}annot"


def test_camvid_train_plus_val(camvid_root):
    assert len(CamVidDataset(camvid_root, "train+val")) == 367 + 101


def test_camvid_void_becomes_ignore_and_labels_in_range(camvid_root):
    dataset = CamVidDataset(camvid_root, "test")
    found_void = False
    for index in range(0, len(dataset), 40):
        image, label = dataset.load(index)
        raw = read_label(dataset.pairs[index][1])
        assert image.shape == (360, 480, 3) and image.dtype == np.uint8
        assert label.shape == (360, 480) and label.dtype == np.uint8
        values = set(np.unique(label).tolist())
        assert values <= set(range(11)) | {255}
        np.testing.assert_array_equal(label == 255, raw == 11)
        np.testing.assert_array_equal(label[raw < 11], raw[raw < 11])
        found_void |= bool((raw == 11).any())
    assert found_void, "expected some CamVid test labels to contain void (11) pixels"


def test_camvid_info_matches_readme(camvid_readme_classes):
    names, palette = camvid_readme_classes["class_names"], camvid_readme_classes["palette"]
    assert list(CAMVID.class_names) == names
    assert [list(c) for c in CAMVID.palette] == palette
    assert CAMVID.ignore_index == 255 and CAMVID.num_classes == 11
    meta = CAMVID.meta()
    assert meta["class_names"] == names and meta["palette"] == palette
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_camvid_with_eval_transforms_gives_tensors(camvid_root):
    dataset = build_dataset("camvid", camvid_root, "val", eval_preset(CAMVID.mean, CAMVID.std))
    image, target = dataset[0]
    assert image.shape == (3, 360, 480) and image.dtype == torch.float32
    assert target.shape == (360, 480) and target.dtype == torch.int64
    assert abs(float(image.mean())) < 2.0  # normalized, not 0..255


def test_seeded_keys_are_reproducible(camvid_root):
    from dfanet_core.data.transforms import train_preset

    dataset = CamVidDataset(camvid_root, "train", train_preset((96, 128)))
    a, b, c = dataset[(3, (0, 11))], dataset[(3, (0, 11))], dataset[(3, (0, 12))]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_cached_dataset_gives_the_same_samples_and_protects_its_arrays(camvid_root):
    from dfanet_core.data.transforms import train_preset

    plain = CamVidDataset(camvid_root, "train", train_preset((96, 128))).subset(3)
    cached = CamVidDataset(camvid_root, "train", train_preset((96, 128))).subset(3)
    cached.cache_in_memory()
    for key in [(0, 5), (2, 9)]:
        a, b = plain[key], cached[key]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    image, label = cached.load(1)
    with pytest.raises(ValueError, match="read-only"):
        image[0, 0] = 0
    assert cached.subset(2)._cache.keys() == {0, 1}


def test_camvid_accepts_recompressed_jpeg_images(camvid_root, tmp_path):
    """A JPEG copy of the images (e.g. to move the set to a GPU machine) pairs with the PNG
    labels by stem."""
    source = CamVidDataset(camvid_root, "val").subset(2)
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    for image_path, label_path in source.pairs:
        cv2.imwrite(str(tmp_path / "val" / f"{image_path.stem}.jpg"), cv2.imread(str(image_path)))
        (tmp_path / "valannot" / label_path.name).write_bytes(label_path.read_bytes())
    copy = CamVidDataset(tmp_path, "val")
    assert copy.stems == source.stems
    image, label = copy.load(0)
    reference_image, reference_label = source.load(0)
    assert np.array_equal(label, reference_label)
    assert np.abs(image.astype(int) - reference_image).mean() < 3


# ---------------------------------------------------------------- Cityscapes (generated)


def test_cityscapes_mapping_table_matches_cityscapesscripts():
    from cityscapesscripts.helpers.labels import labels

    for label in labels:
        if label.id < 0:
            continue
        expected = label.trainId if label.trainId not in (-1, 255) else 255
        assert CITYSCAPES_LABELID_TO_TRAINID[label.id] == expected, label.name
        if expected != 255:
            assert CITYSCAPES.class_names[expected] == label.name
            assert tuple(CITYSCAPES.palette[expected]) == tuple(label.color)


def test_cityscapes_loader_maps_label_ids(tmp_path):
    raw_labels = make_cityscapes_tree(tmp_path)
    dataset = CityscapesDataset(tmp_path, "val")
    assert len(dataset) == 4
    assert dataset.stems[0] == "aachen_000000_000019"
    _, label = dataset.load(0)
    raw = raw_labels[0]
    # A few ids by hand: 7 road -> 0, 8 sidewalk -> 1, 26 car -> 13, 33 bicycle -> 18,
    # 0 unlabeled / 9 parking / 30 trailer -> ignore.
    for label_id, train_id in [(7, 0), (8, 1), (26, 13), (33, 18), (0, 255), (9, 255), (30, 255)]:
        assert (raw == label_id).any()
        assert (label[raw == label_id] == train_id).all(), label_id
    back = cityscapes_trainid_to_labelid()[np.where(label == 255, 0, label)]
    np.testing.assert_array_equal(back[label != 255], raw[label != 255])


def test_cityscapes_missing_label_is_named(tmp_path):
    make_cityscapes_tree(tmp_path)
    victim = tmp_path / "gtFine/val/bochum/bochum_000001_000019_gtFine_labelIds.png"
    victim.unlink()
    with pytest.raises(DatasetError, match=r"1 of 4 images .*bochum_000001_000019"):
        CityscapesDataset(tmp_path, "val")


def test_cityscapes_label_id_out_of_range(tmp_path):
    make_cityscapes_tree(tmp_path)
    path = tmp_path / "gtFine/val/aachen/aachen_000000_000019_gtFine_labelIds.png"
    cv2.imwrite(str(path), np.full((32, 64), 40, np.uint8))
    with pytest.raises(DatasetError, match=r"aachen_000000_000019_gtFine_labelIds.png.*\[40\]"):
        CityscapesDataset(tmp_path, "val").load(0)


# ---------------------------------------------------------------- folder dataset


def _write_folder(root: Path, n: int = 3, num_classes: int = 4) -> None:
    rng = np.random.default_rng(1)
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    for i in range(n):
        image = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
        cv2.imwrite(str(root / f"images/train/f{i}.jpg"), image)
        label = rng.integers(0, num_classes, (20, 30)).astype(np.uint8)
        label[0, :5] = 255
        cv2.imwrite(str(root / f"labels/train/f{i}.png"), label)


def test_folder_dataset(tmp_path):
    _write_folder(tmp_path)
    dataset = build_dataset("folder", tmp_path, "train", num_classes=4, class_names=list("abcd"))
    assert len(dataset) == 3 and dataset.stems == ["f0", "f1", "f2"]
    assert dataset.info.class_names == tuple("abcd") and len(dataset.info.palette) == 4
    image, label = dataset.load(1)
    assert image.shape == (20, 30, 3) and set(np.unique(label)) <= {0, 1, 2, 3, 255}
    direct = FolderDataset(tmp_path / "images/train", tmp_path / "labels/train", num_classes=4)
    assert direct.info.class_names[0] == "class_0"


def test_folder_label_outside_class_range_names_the_file(tmp_path):
    _write_folder(tmp_path, num_classes=4)
    dataset = FolderDataset(tmp_path / "images/train", tmp_path / "labels/train", num_classes=3)
    with pytest.raises(DatasetError, match=r"f0\.png has values \[3\].*0-2, 255"):
        for index in range(len(dataset)):
            dataset.load(index)


def test_folder_image_without_label(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "labels/train/f2.png").unlink()
    with pytest.raises(DatasetError, match=r"images in .*train have no label file.*f2\.jpg"):
        build_dataset("folder", tmp_path, "train", num_classes=4)


def test_label_size_mismatch(tmp_path):
    _write_folder(tmp_path)
    cv2.imwrite(str(tmp_path / "labels/train/f0.png"), np.zeros((10, 10), np.uint8))
    dataset = FolderDataset(tmp_path / "images/train", tmp_path / "labels/train", num_classes=4)
    with pytest.raises(DatasetError, match="same size"):
        dataset.load(0)


# ---------------------------------------------------------------- path errors


def test_missing_root_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=r"CamVid root folder not found: .*nowhere"):
        build_dataset("camvid", missing, "train")


def test_missing_split_folder_says_what_was_expected(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DatasetError, match=r"trainannot.*not found"):
        build_dataset("camvid", tmp_path, "train")


def test_no_pairs(tmp_path):
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    with pytest.raises(DatasetError, match=r"no images found in .*val \(expected \*\.png"):
        build_dataset("camvid", tmp_path, "val")


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(DatasetError, match="valid: camvid, cityscapes, folder"):
        build_dataset("voc", tmp_path, "train")
    with pytest.raises(DatasetError, match="unknown CamVid split 'dev'"):
        build_dataset("camvid", tmp_path, "dev")
    with pytest.raises(DatasetError, match="needs num_classes"):
        build_dataset("folder", tmp_path, "train")


# ---------------------------------------------------------------- class weights


def test_class_weights_by_hand():
    from dfanet_core.data.class_weights import class_weights

    pixels, image_pixels = np.array([90, 10, 0]), np.array([100, 50, 0])
    enet = class_weights(pixels, image_pixels, "enet")
    raw = np.array([1 / np.log(1.92), 1 / np.log(1.12)])
    np.testing.assert_allclose(enet[:2], raw / (0.9 * raw[0] + 0.1 * raw[1]), rtol=1e-6)
    median = class_weights(pixels, image_pixels, "median-freq")
    # class frequencies 0.9 and 0.2, median 0.55 -> 0.611 and 2.75, then mean-1 scaling
    np.testing.assert_allclose(median, [0.55 / 0.9 / 0.825, 2.75 / 0.825, 0.0], rtol=1e-6)
    for weights in (enet, median):
        assert weights[2] == 0 and (pixels / 100 * weights).sum() == pytest.approx(1.0)
    assert class_weights(pixels, image_pixels, "none") is None
    with pytest.raises(ValueError, match="must be one of"):
        class_weights(pixels, image_pixels, "inverse")


def test_label_statistics_count_real_camvid_labels(camvid_root):
    from dfanet_core.data.class_weights import label_statistics

    dataset = CamVidDataset(camvid_root, "val").subset(3)
    pixels, image_pixels = label_statistics(dataset)
    labels = [dataset.load(i)[1] for i in range(3)]
    expected = sum(np.bincount(lab[lab < 11].ravel(), minlength=11) for lab in labels)
    assert np.array_equal(pixels, expected)
    valid = [(lab < 11).sum() for lab in labels]
    for c in range(11):
        assert image_pixels[c] == sum(v for v, lab in zip(valid, labels) if (lab == c).any())
