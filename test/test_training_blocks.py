"""The training building blocks without a training run: batched augmentation (geometry checked
against coordinates), the decoded bank and its sampler, the schedule, losses, the weight EMA,
time budgets, per-sequence metrics, deep supervision."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dfanet_core import create_model, load_checkpoint, save_checkpoint
from dfanet_core.checkpoint import default_meta
from dfanet_core.data import CAMVID, CamVidDataset, DatasetError
from dfanet_core.data.bank import EpochSampler, ImageBank
from dfanet_core.data.batch_augment import (
    AugmentConfig,
    AugmentParams,
    BatchAugment,
    affine_theta,
    iteration_generator,
    photometric,
    sample_params,
    warp,
)
from dfanet_core.metrics import ConfusionMatrix, GroupedConfusion
from dfanet_core.models.deep_supervision import DeepSupervision
from dfanet_core.train import budget
from dfanet_core.train.ema import ModelEma
from dfanet_core.train.losses import SegmentationLoss
from dfanet_core.train.schedule import Schedule, Stage, build_schedule

H, W = 40, 60
BLOCK = 10  # label blocks of 10x10 source pixels
NO_FILL = torch.zeros(3)


def coordinate_batch(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose red channel is 4x (column) and green 6x (row): a linear ramp that bilinear
    sampling reproduces exactly; labels number the 10x10 blocks (0..23)."""
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    image = torch.stack([xs * 4, ys * 6, torch.full_like(xs, 7)]).to(torch.uint8)
    label = ((ys // BLOCK) * (W // BLOCK) + xs // BLOCK).to(torch.uint8)
    return image.expand(n, -1, -1, -1).clone(), label.expand(n, -1, -1).clone()


def params(scale, oy, ox, flip, n=1) -> AugmentParams:
    one = torch.ones(n)
    return AugmentParams(one * scale, one * oy, one * ox, torch.full((n,), flip), one, one, one)


@pytest.mark.parametrize("flip", [False, True])
def test_unit_scale_warp_is_an_exact_crop(flip):
    images, labels = coordinate_batch(1)
    p = params(1.0, 7, 11, flip)
    out, targets = warp(images, labels, affine_theta(p, (H, W), (20, 30)), (20, 30), NO_FILL)
    crop_image = images[..., 7:27, 11:41].float()
    crop_label = labels[..., 7:27, 11:41].long()
    if flip:
        crop_image, crop_label = crop_image.flip(-1), crop_label.flip(-1)
    assert torch.allclose(out, crop_image, atol=1e-3)
    assert torch.equal(targets, crop_label)


def test_scaled_flipped_images_land_where_their_labels_say():
    """For random scales, offsets and flips, every in-frame output pixel's image value decodes
    to a source coordinate whose 10x10 block is the label there (away from block edges, where
    bilinear and nearest legitimately differ by a fraction of a pixel)."""
    images, labels = coordinate_batch(8)
    config = AugmentConfig((32, 48), (0.5, 2.0), 0.5, ignore_index=255)
    p = sample_params(8, (H, W), config, iteration_generator(3, 17, "cpu"))
    assert p.flip.any() and not p.flip.all(), "the draw should exercise both flip states"
    out, targets = warp(images, labels, affine_theta(p, (H, W), (32, 48)), (32, 48), NO_FILL)
    x = out[:, 0] / 4
    y = out[:, 1] / 6
    inside = (targets != 255) & (x > 1) & (x < W - 2) & (y > 1) & (y < H - 2)
    away = ((x % BLOCK) > 0.75) & ((x % BLOCK) < BLOCK - 0.75)
    away &= ((y % BLOCK) > 0.75) & ((y % BLOCK) < BLOCK - 0.75)
    check = inside & away
    assert check.sum() > 2000
    decoded = (y // BLOCK) * (W // BLOCK) + x // BLOCK
    assert torch.equal(decoded[check].long(), targets[check])


def test_out_of_frame_pixels_get_the_fill_colour_and_the_ignore_label():
    images, labels = coordinate_batch(1)
    fill = torch.tensor([10.0, 20.0, 30.0])
    # Scale 0.5: a 20x30 image inside a 40x60 crop, placed at (-5, -12) -> rows 5..24, cols 12..41.
    p = params(0.5, -5, -12, False)
    out, targets = warp(images, labels, affine_theta(p, (H, W), (40, 60)), (40, 60), fill, 99)
    outside = torch.ones(40, 60, dtype=torch.bool)
    outside[5:25, 12:42] = False
    assert (targets[0][outside] == 99).all() and (targets[0][~outside] != 99).all()
    assert torch.allclose(out[0][:, outside], fill.view(3, 1).expand(3, int(outside.sum())))


def test_labels_stay_valid_and_draws_are_deterministic(camvid_root):
    dataset = CamVidDataset(camvid_root, "train").subset(4)
    bank = ImageBank.from_dataset(dataset)
    config = AugmentConfig((96, 128), (0.5, 2.0), 0.5, 0.3, 0.3, 0.3)
    augment = BatchAugment(config)
    a = augment(bank.images, bank.labels, iteration_generator(5, 9, "cpu"))
    b = augment(bank.images, bank.labels, iteration_generator(5, 9, "cpu"))
    c = augment(bank.images, bank.labels, iteration_generator(5, 10, "cpu"))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    allowed = set(bank.labels.unique().tolist()) | {255}
    assert set(a[1].unique().tolist()) <= allowed and a[1].dtype == torch.int64
    assert a[0].shape == (4, 3, 96, 128) and a[0].dtype == torch.float32
    # The shares of a global batch are augmented as the whole batch would be.
    share = augment(bank.images[2:], bank.labels[2:], iteration_generator(5, 9, "cpu"), (2, 4))
    assert torch.equal(share[0], a[0][2:]) and torch.equal(share[1], a[1][2:])


def test_photometric_jitter_identity_and_brightness():
    images = torch.rand(2, 3, 8, 8) * 200
    same = params(1.0, 0, 0, False, n=2)
    assert torch.allclose(photometric(images, same), images, atol=1e-4)
    brighter = AugmentParams(same.scale, same.offset_y, same.offset_x, same.flip,
                             torch.tensor([1.2, 0.5]), same.contrast, same.saturation)
    out = photometric(images, brighter)
    assert torch.allclose(out[1], images[1] * 0.5, atol=1e-3)
    assert out.max() <= 255.0


def test_augment_config_rejects_bad_values():
    with pytest.raises(ValueError, match="scale_range"):
        AugmentConfig(scale_range=(2.0, 1.0))
    with pytest.raises(ValueError, match="crop_size"):
        AugmentConfig(crop_size=(0, 10))
    with pytest.raises(ValueError, match="brightness"):
        AugmentConfig(brightness=1.5)


def test_bank_rejects_mixed_sizes_naming_the_file(tmp_path):
    import cv2

    for split in ("train", "trainannot"):
        (tmp_path / split).mkdir()
    cv2.imwrite(str(tmp_path / "train" / "a.png"), np.zeros((10, 12, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "trainannot" / "a.png"), np.zeros((10, 12), np.uint8))
    cv2.imwrite(str(tmp_path / "train" / "b.png"), np.zeros((8, 12, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "trainannot" / "b.png"), np.zeros((8, 12), np.uint8))
    dataset = CamVidDataset(tmp_path, "train")
    with pytest.raises(DatasetError, match=r"b\.png is 12x8, the first one 12x10"):
        ImageBank.from_dataset(dataset)
    assert ImageBank.from_dataset(dataset, size=(8, 12)).image_size == (8, 12)


def test_epoch_sampler_walks_permutations_and_splits_global_batches():
    sampler = EpochSampler(10, seed=3)
    stream = sampler.indices(0, 30)
    for epoch in range(3):
        assert sorted(stream[10 * epoch : 10 * epoch + 10].tolist()) == list(range(10))
    assert torch.equal(sampler.indices(7, 6), stream[7:13])  # across an epoch boundary
    whole = sampler.batch(4, 6)
    parts = [sampler.batch(4, 6, rank, 2) for rank in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    assert torch.equal(EpochSampler(10, seed=3).indices(20, 10), stream[20:30])


def test_schedule_from_epochs_positions_and_learning_rate():
    augment = AugmentConfig()
    schedule = build_schedule(
        [{"epochs": 2, "crop_size": [8, 8], "batch_size": 4},
         {"iterations": 3, "batch_size": 2, "scale_range": [1, 1]}],
        num_samples=10, base_augment=augment, default_batch_size=16, warmup_iters=2,
        warmup_factor=0.5, poly_power=1.0,
    )  # fmt: skip
    first, second = schedule.stages
    assert first.iterations == 5 and first.augment.crop_size == (8, 8)  # ceil(2 * 10 / 4)
    assert second.augment.scale_range == (1.0, 1.0) and second.augment.crop_size == (360, 360)
    assert schedule.total_iterations == 8
    assert [schedule.stage_index(i) for i in (0, 4, 5, 7, 9)] == [0, 0, 1, 1, 1]
    assert schedule.position(5) == 20 and schedule.position(7) == 24 and schedule.position(9) == 28
    assert schedule.lr_factor(0) == pytest.approx(0.5)
    assert schedule.lr_factor(1) == pytest.approx(0.75 * (1 - 1 / 8))
    assert schedule.lr_factor(4) == pytest.approx(0.5) and schedule.lr_factor(8) == 0.0
    assert schedule.epochs_done(5, 10) == 2.0
    with pytest.raises(ValueError, match="exactly one of"):
        build_schedule([{"batch_size": 2}], 10, augment, 2)
    with pytest.raises(ValueError, match=r"unknown keys \['crop'\]"):
        build_schedule([{"epochs": 1, "crop": 3}], 10, augment, 2)
    single = Schedule((Stage(100, 4),))
    assert single.with_total(40).total_iterations == 40
    with pytest.raises(ValueError, match="single-stage"):
        schedule.with_total(4)


def test_cross_entropy_and_ohem_losses():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5)
    targets = torch.randint(0, 3, (2, 4, 5))
    targets[0, 0] = 255
    ce_sum, count = SegmentationLoss("ce")(logits, targets)
    assert count == 35
    mean = F.cross_entropy(logits, targets, ignore_index=255).item()
    assert (ce_sum / count).item() == pytest.approx(mean, rel=1e-6)
    pixel = F.cross_entropy(logits, targets, ignore_index=255, reduction="none")
    valid = pixel[targets != 255]
    ohem = SegmentationLoss("ohem", ohem_threshold=0.7, ohem_min_fraction=0.5)
    total, kept = ohem(logits, targets)
    hard = valid[valid > -math.log(0.7)]
    expected = hard if len(hard) >= 18 else valid.topk(18).values
    assert kept == len(expected) and total.item() == pytest.approx(expected.sum().item(), rel=1e-5)
    # Easy pixels only: the hardest min_fraction are still kept.
    confident = F.one_hot(targets.clamp(max=2), 3).permute(0, 3, 1, 2).float() * 20
    total, kept = SegmentationLoss("ohem", ohem_min_fraction=0.25)(confident, targets)
    assert kept == math.ceil(35 * 0.25)
    with pytest.raises(ValueError, match="loss must be one of"):
        SegmentationLoss("focal")


def test_ema_arithmetic_warmup_and_buffers():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1, bias=False), torch.nn.BatchNorm2d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    ema = ModelEma(model, decay=0.9)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    expected = 1.0
    for step, value in enumerate([3.0, -1.0, 5.0, 2.0] * 10):
        with torch.no_grad():
            model[0].weight.fill_(value)
            model[1].running_mean.fill_(value)
            model[1].num_batches_tracked.fill_(step + 7)
        decay = min(0.9, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * value
        ema.update(model)
    assert ema.module[0].weight.item() == pytest.approx(expected, rel=1e-5)
    assert ema.module[1].num_batches_tracked.item() == 46
    assert not any(p.requires_grad for p in ema.module.parameters())
    clone = ModelEma(model, decay=0.5)
    clone.load_state_dict(ema.state_dict())
    assert clone.updates == 40 and clone.decay == 0.9
    assert torch.equal(clone.module[0].weight, ema.module[0].weight)


def test_rate_meter_and_stretch_budget():
    meter = budget.RateMeter()
    meter.observe(100.0, 1)  # the first iteration (autotuning) is left out
    assert meter.seconds_per_iteration(100.0, 1) is None
    meter.observe(102.0, 2)
    assert meter.seconds_per_iteration(120.0, 11) == pytest.approx(2.0)
    assert not budget.stretch_should_stop(50.0, 60.0, 2.0, 5.0)
    assert budget.stretch_should_stop(54.0, 60.0, 2.0, 5.0)
    assert not budget.stretch_should_stop(10.0, math.inf, 2.0, 5.0)
    assert budget.stretch_should_stop(61.0, 60.0, None, 0.0)


def test_fitted_total_shortens_never_lengthens():
    # 100 s left at 1 s/iteration with a 10 s reserve: 90 more iterations fit.
    assert budget.fitted_total(20, 1000, 1.0, 100.0, 10.0) == 110
    assert budget.fitted_total(20, 50, 1.0, 100.0, 10.0) == 50
    assert budget.fitted_total(20, 1000, 1.0, 5.0, 10.0) == 20  # nothing fits: end now
    assert budget.fitted_total(20, 1000, 0.0, 5.0, 10.0) == 1000


def test_per_sequence_matrices_sum_to_the_overall_one():
    rng = np.random.default_rng(0)
    grouped, overall = GroupedConfusion(4, 255), ConfusionMatrix(4, 255)
    for name in ["0001TP_1", "Seq05VD_1", "Seq05VD_2", "0001TP_2", "Seq05VD_3"]:
        target = rng.integers(0, 5, (6, 7))
        target[target == 4] = 255
        prediction = rng.integers(0, 4, (6, 7))
        grouped.update(CAMVID.sequence_of(name), target, prediction)
        overall.update(target, prediction)
    assert sorted(grouped.groups) == ["0001TP", "Seq05VD"]
    assert np.array_equal(grouped.total().counts, overall.counts)
    scores = grouped.compute()
    assert scores["overall"]["miou"] == pytest.approx(overall.compute()["miou"])
    assert scores["groups"]["0001TP"]["num_pixels"] + scores["groups"]["Seq05VD"][
        "num_pixels"] == overall.compute()["num_pixels"]


def test_deep_supervision_heads_never_reach_checkpoints(tmp_path):
    net = create_model("backbone_b", num_classes=5)
    wrapped = DeepSupervision(net).train()
    logits, aux = wrapped(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 5, 64, 64) and len(aux) == len(net.backbones)
    assert all(a.shape[:2] == (2, 5) for a in aux)
    (logits.sum() + sum(a.sum() for a in aux)).backward()
    assert all(p.grad is not None for p in wrapped.aux_heads.parameters())
    assert isinstance(wrapped.eval()(torch.randn(1, 3, 64, 64)), torch.Tensor)
    path = save_checkpoint(tmp_path / "m.safetensors", wrapped.net,
                           default_meta("backbone_b", 5))  # fmt: skip
    loaded, _ = load_checkpoint(path)
    assert set(loaded.state_dict()) == set(create_model("backbone_b", num_classes=5).state_dict())
    assert not any("aux" in key for key in loaded.state_dict())
