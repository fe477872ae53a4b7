"""Losses of the method: the MAE reconstruction loss (Eq. 1) and the MAD distillation loss (MMANet)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, available: torch.Tensor,
                        per_modality: bool = False):
    """Eq. 1: per sample, the mean over the modalities available in the data of the MSE over the whole patch;
    then the mean over the batch. Unavailable modalities get no target. With ``per_modality`` also returns
    the (B, M) per-modality MSE (NaN where unavailable)."""
    mse = (reconstruction.float() - target.float()).pow(2).flatten(2).mean(2)  # (B, M)
    available = available.to(mse.dtype)
    loss = ((mse * available).sum(1) / available.sum(1).clamp(min=1)).mean()
    if per_modality:
        return loss, mse.detach().masked_fill(available == 0, float("nan"))
    return loss
