"""Exponential moving average of a model's weights (what the from-scratch recipes ship)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """``ema = decay_n * ema + (1 - decay_n) * model`` after every step, for parameters and
    floating-point buffers (batch-norm running statistics); integer buffers are copied.
    ``decay_n = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the average does not
    drag the random initialisation along for thousands of steps."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        averaged, copied_from, copied_to = [], [], []
        mine = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = mine[name]
            if value.is_floating_point():
                averaged.append((target, value))
            else:
                copied_to.append(target)
                copied_from.append(value)
        if averaged:
            targets = [target for target, _ in averaged]
            values = [value.to(target.dtype) for target, value in averaged]
            torch._foreach_lerp_(targets, values, 1.0 - decay)
        for target, value in zip(copied_to, copied_from):
            target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
