"""Optimisers and learning-rate schedules of the trainers: nnU-Net's (SGD, poly decay) and the paper's (Adam,
cosine decay), both aware of parameter groups with their own learning-rate scale (stage 4's recovering module)."""
from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LRScheduler

from nnunet_allstage.config import PAPER_LR, PAPER_WEIGHT_DECAY


class EpochLRScheduler(LRScheduler):
    """Poly (nnU-Net's, exponent 0.9) or cosine decay by epoch, stateless like nnU-Net's PolyLRScheduler (so `--c`
    resumes it exactly). Each parameter group's learning rate is the schedule's times its ``lr_scale`` (1 if
    absent)."""

    def __init__(self, optimizer, initial_lr: float, max_steps: int, shape: str):
        if shape not in ("poly", "cosine"):
            raise ValueError(f"unknown schedule {shape!r}")
        self.initial_lr, self.max_steps, self.shape = initial_lr, max(1, max_steps), shape
        super().__init__(optimizer, -1)

    def factor(self, step: int) -> float:
        progress = min(step, self.max_steps) / self.max_steps
        if self.shape == "poly":
            return (1 - progress) ** 0.9
        return 0.5 * (1 + math.cos(math.pi * progress))

    def step(self, current_step=None):
        step = self.last_epoch + 1 if current_step is None else current_step
        self.last_epoch = step
        lr = self.initial_lr * self.factor(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)


def adam_cosine(param_groups: list[dict], lr: float, weight_decay: float, num_epochs: int):
    """Stage 1's and the paper's optimiser: Adam with cosine decay."""
    optimizer = torch.optim.Adam(param_groups, lr=lr, weight_decay=weight_decay)
    return optimizer, EpochLRScheduler(optimizer, lr, num_epochs, "cosine")


def segmentation_optimizer(kind: str, param_groups: list[dict], nnunet_lr: float, nnunet_weight_decay: float,
                           num_epochs: int):
    """``nnunet``: SGD with Nesterov momentum 0.99 and poly decay, as nnUNetTrainer; ``paper``: Adam 3e-4, weight
    decay 5e-4, cosine decay (the paper's Sec. 4.2). Returns (optimizer, scheduler, initial learning rate)."""
    if kind == "paper":
        return (*adam_cosine(param_groups, PAPER_LR, PAPER_WEIGHT_DECAY, num_epochs), PAPER_LR)
    optimizer = torch.optim.SGD(param_groups, nnunet_lr, weight_decay=nnunet_weight_decay, momentum=0.99,
                                nesterov=True)
    return optimizer, EpochLRScheduler(optimizer, nnunet_lr, num_epochs, "poly"), nnunet_lr
