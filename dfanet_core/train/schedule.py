"""The training schedule as data: stages (crop, batch, augmentation, length), warm-up, poly.

A recipe fixes its length in epochs of the training set; :func:`build_schedule` turns that into
iterations once the set's size is known. Several stages make a curriculum (the CPU recipes train
most epochs on small crops, then finish on full frames, as FC-DenseNet did); one poly curve
spans them all, so the learning rate never jumps up between stages except for the linear batch
scaling. Everything here is pure arithmetic, tested without a model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..data.batch_augment import AugmentConfig


@dataclass(frozen=True)
class Stage:
    """``iterations`` steps of ``batch_size`` (global) samples augmented by ``augment``."""

    iterations: int
    batch_size: int
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    epochs: float | None = None  # what the recipe asked for (reporting only)

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.batch_size < 1:
            raise ValueError(f"a stage needs iterations >= 1 and batch_size >= 1, got {self}")


@dataclass(frozen=True)
class Schedule:
    """Stages run back to back under one learning-rate curve:
    ``lr(i) = lr_at_batch(stage batch) * warmup(i) * (1 - i / total) ** poly_power``."""

    stages: tuple[Stage, ...]
    warmup_iters: int = 0
    warmup_factor: float = 0.1
    poly_power: float = 0.9

    def __post_init__(self) -> None:
        if not self.stages:
            raise ValueError("a schedule needs at least one stage")

    @property
    def total_iterations(self) -> int:
        return sum(s.iterations for s in self.stages)

    def stage_index(self, iteration: int) -> int:
        """Index of the stage that runs ``iteration`` (0-based; the last one past the end)."""
        end = 0
        for index, stage in enumerate(self.stages):
            end += stage.iterations
            if iteration < end:
                return index
        return len(self.stages) - 1

    def stage(self, iteration: int) -> Stage:
        return self.stages[self.stage_index(iteration)]

    def position(self, iteration: int) -> int:
        """Samples drawn before ``iteration``: where its batch starts in the sample stream."""
        position, start = 0, 0
        for stage in self.stages:
            steps = min(max(iteration - start, 0), stage.iterations)
            position += steps * stage.batch_size
            start += stage.iterations
        if iteration > start:  # past the end: keep drawing the last stage's batches
            position += (iteration - start) * self.stages[-1].batch_size
        return position

    def lr_factor(self, iteration: int) -> float:
        """Warm-up times poly at ``iteration`` (0 at and after the end)."""
        factor = max(0.0, 1.0 - iteration / self.total_iterations) ** self.poly_power
        if iteration < self.warmup_iters:
            progress = iteration / self.warmup_iters
            factor *= self.warmup_factor + (1.0 - self.warmup_factor) * progress
        return factor

    def epochs_done(self, iteration: int, num_samples: int) -> float:
        return self.position(iteration) / num_samples

    def with_total(self, total: int) -> Schedule:
        """The same single-stage schedule shortened to ``total`` iterations (time budgets)."""
        if len(self.stages) != 1:
            raise ValueError("only a single-stage schedule can be refitted to a time budget")
        return replace(self, stages=(replace(self.stages[0], iterations=max(1, int(total))),))


STAGE_KEYS = ("epochs", "iterations", "crop_size", "batch_size", "scale_range")


def build_schedule(
    stage_specs: Sequence[Mapping[str, Any]],
    num_samples: int,
    base_augment: AugmentConfig,
    default_batch_size: int,
    warmup_iters: int = 0,
    warmup_factor: float = 0.1,
    poly_power: float = 0.9,
) -> Schedule:
    """Stages from recipe entries (``epochs`` or ``iterations``; optional ``crop_size``,
    ``batch_size``, ``scale_range`` overriding ``base_augment`` / ``default_batch_size``).
    ``epochs`` becomes ``ceil(epochs * num_samples / batch_size)`` iterations."""
    stages = []
    for number, spec in enumerate(stage_specs, 1):
        unknown = sorted(set(spec) - set(STAGE_KEYS))
        if unknown:
            raise ValueError(
                f"stage {number} has unknown keys {unknown}; valid: {', '.join(STAGE_KEYS)}"
            )
        if ("epochs" in spec) == ("iterations" in spec):
            raise ValueError(f"stage {number} needs exactly one of 'epochs' or 'iterations'")
        batch = int(spec.get("batch_size", default_batch_size))
        augment = base_augment
        if "crop_size" in spec:
            augment = replace(augment, crop_size=tuple(int(v) for v in spec["crop_size"]))
        if "scale_range" in spec:
            augment = replace(augment, scale_range=tuple(float(v) for v in spec["scale_range"]))
        if "epochs" in spec:
            epochs = float(spec["epochs"])
            iterations = math.ceil(epochs * num_samples / batch)
        else:
            epochs, iterations = None, int(spec["iterations"])
        stages.append(Stage(iterations, batch, augment, epochs))
    return Schedule(tuple(stages), warmup_iters, warmup_factor, poly_power)
