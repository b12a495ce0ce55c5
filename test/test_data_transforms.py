"""Paired transforms: labels stay valid and aligned with the image; padding is ignored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dfanet_core.data import IterationSampler, ShardSampler
from dfanet_core.data.transforms import (
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResize,
    Resize,
    ToTensor,
    eval_preset,
    mean_fill,
    train_preset,
)


def coordinate_pair(h: int = 60, w: int = 80) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image whose channels encode (y, x, 7); labels equal to x and to y."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.uint8)
    image = np.stack([ys, xs, np.full_like(xs, 7)], axis=-1)
    return image, xs.copy(), ys.copy()


@pytest.mark.parametrize("seed", range(8))
def test_crop_and_flip_keep_image_and_label_aligned(seed):
    image, label_x, label_y = coordinate_pair()
    steps = Compose([RandomCrop((40, 50)), RandomHorizontalFlip(0.5)])
    out_image, out_x = steps(image, label_x, rng=np.random.default_rng(seed))
    _, out_y = steps(image, label_y, rng=np.random.default_rng(seed))
    assert out_image.shape == (40, 50, 3) and out_x.shape == (40, 50)
    np.testing.assert_array_equal(out_image[..., 1], out_x)
    np.testing.assert_array_equal(out_image[..., 0], out_y)
    # A contiguous window of the coordinate ramp, mirrored or not.
    assert np.all(np.abs(np.diff(out_x.astype(int), axis=1)) == 1)


def test_flip_happens_for_some_seeds_and_not_others():
    image, label, _ = coordinate_pair()
    flips = [
        RandomHorizontalFlip(0.5)(image, label, rng=np.random.default_rng(s))[1][0, 0] != 0
        for s in range(20)
    ]
    assert any(flips) and not all(flips)


def test_crop_pads_image_with_fill_and_label_with_ignore():
    image = np.full((20, 30, 3), 9, np.uint8)
    label = np.full((20, 30), 2, np.uint8)
    crop = RandomCrop((50, 60), fill=(1, 2, 3), ignore_index=255)
    out_image, out_label = crop(image, label, rng=np.random.default_rng(0))
    assert out_image.shape == (50, 60, 3)
    padded = out_label == 255
    assert padded.sum() == 50 * 60 - 20 * 30
    assert (out_image[padded] == [1, 2, 3]).all()
    assert (out_image[~padded] == 9).all() and (out_label[~padded] == 2).all()


@pytest.mark.parametrize("seed", range(5))
def test_random_resize_uses_nearest_for_labels(seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    label = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(45, 61))
    out_image, out_label = RandomResize(0.75, 1.75)(image, label, rng=np.random.default_rng(seed))
    assert out_image.shape[:2] == out_label.shape
    scale = out_label.shape[0] / 45
    assert 0.74 <= scale <= 1.76
    assert set(np.unique(out_label)) <= {0, 3, 7, 255}  # no interpolated label values


def test_resize_keeps_image_and_label_aligned():
    image, label_x, _ = coordinate_pair(60, 100)
    out_image, out_label = Resize((90, 150))(image, label_x)
    # Interior: bilinear x ramp vs nearest x differ by at most half a source pixel (+ rounding).
    diff = np.abs(out_image[:, 2:-2, 1].astype(int) - out_label[:, 2:-2].astype(int))
    assert diff.max() <= 1


def test_train_preset_output_and_label_values(camvid_samples):
    image, label, _ = camvid_samples(1)[0]
    label = np.where(label == 11, 255, label).astype(np.uint8)
    preset = train_preset((96, 128))
    for seed in range(6):
        x, y = preset(image, label, rng=np.random.default_rng(seed))
        assert x.shape == (3, 96, 128) and x.dtype == torch.float32
        assert y.shape == (96, 128) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= set(range(11)) | {255}


def test_train_preset_padding_normalizes_to_zero():
    image = np.full((10, 10, 3), 200, np.uint8)
    label = np.zeros((10, 10), np.uint8)
    preset = train_preset((64, 64), scale_range=(1.0, 1.0), hflip_prob=0.0)
    x, y = preset(image, label, rng=np.random.default_rng(0))
    pad = y == 255
    assert pad.sum() == 64 * 64 - 100
    # Padding uses the mean colour, so it normalizes to ~0 (rounding to uint8 only).
    assert x[:, pad].abs().max() < 0.02


def test_eval_preset_is_deterministic_and_normalizes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (30, 40), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x1, y1 = eval_preset(mean, std)(image, label)
    x2, _ = eval_preset(mean, std)(image, label)
    assert torch.equal(x1, x2)
    expected = (image[5, 7] / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(x1[:, 5, 7].numpy(), expected, rtol=1e-5)
    assert torch.equal(y1, torch.from_numpy(label).long())


def test_normalize_and_to_tensor_shapes():
    image = np.zeros((4, 5, 3), np.uint8)
    x, y = Compose([Normalize(), ToTensor()])(image, np.zeros((4, 5), np.uint8))
    assert x.shape == (3, 4, 5) and y.shape == (4, 5)
    with pytest.raises(ValueError, match="std must be 3 positive"):
        Normalize(std=(0, 1, 1))
    assert mean_fill((0.5, 0.0, 1.0)) == [128, 0, 255]


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="min_scale"):
        RandomResize(2.0, 1.0)
    with pytest.raises(ValueError, match="RandomCrop size"):
        RandomCrop((0, 10))
    with pytest.raises(ValueError, match="flip probability"):
        RandomHorizontalFlip(1.5)


# ---------------------------------------------------------------- samplers


def _take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_iteration_sampler_ranks_partition_the_global_batch():
    single = _take(IterationSampler(10, batch_size=4, seed=3), 4 * 7)
    rank0 = _take(IterationSampler(10, 2, seed=3, rank=0, world_size=2), 2 * 7)
    rank1 = _take(IterationSampler(10, 2, seed=3, rank=1, world_size=2), 2 * 7)
    for i in range(7):
        assert single[4 * i : 4 * i + 4] == rank0[2 * i : 2 * i + 2] + rank1[2 * i : 2 * i + 2]
    first_epoch = [index for index, _ in single[:10]]
    assert sorted(first_epoch) == list(range(10))  # every sample once per epoch


def test_iteration_sampler_resumes_mid_epoch():
    full = _take(IterationSampler(7, batch_size=3, seed=1), 3 * 5)
    resumed = _take(IterationSampler(7, batch_size=3, seed=1, start_iteration=2), 3 * 3)
    assert resumed == full[6:]


def test_shard_sampler_covers_each_sample_once():
    shards = [list(ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(11))
