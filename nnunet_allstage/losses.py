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


def pool_to_grid(feature: torch.Tensor, max_size: int) -> torch.Tensor:
    """Adaptive average pooling to at most ``max_size`` positions per spatial axis."""
    size = [min(s, max_size) for s in feature.shape[2:]]
    pool = F.adaptive_avg_pool3d if feature.ndim == 5 else F.adaptive_avg_pool2d
    return pool(feature, size)


def _rows(feature: torch.Tensor) -> torch.Tensor:
    """(B, C, *S) -> (B * prod(S), C): one row per position of the whole batch."""
    return feature.flatten(2).transpose(1, 2).reshape(-1, feature.shape[1])


def predictive_entropy(teacher_logits: torch.Tensor, regions: bool) -> torch.Tensor:
    """(B, 1, *S) the teacher's predictive entropy: the sum of binary entropies of its sigmoid region outputs, or
    the softmax entropy."""
    logits = teacher_logits.detach().float()
    if regions:
        p = torch.sigmoid(logits)
        return F.binary_cross_entropy_with_logits(logits, p, reduction="none").sum(1, keepdim=True)
    logp = torch.log_softmax(logits, 1)
    return -(logp.exp() * logp).sum(1, keepdim=True)


def entropy_weights(entropy: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Per-position weights (B * prod(grid),), summing to 1: an entropy map pooled to the feature grid."""
    pool = F.adaptive_avg_pool3d if entropy.ndim == 5 else F.adaptive_avg_pool2d
    w = pool(entropy, grid).flatten().clamp(min=0) + 1e-12
    return w / w.sum()


def uncertainty_weights(teacher_logits: torch.Tensor, grid: tuple[int, ...], regions: bool) -> torch.Tensor:
    """MAD's weights: the teacher's predictive entropy pooled to the feature grid, summing to 1."""
    return entropy_weights(predictive_entropy(teacher_logits, regions), grid)


def mad_loss(student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """MAD (MMANet): rows = positions of the whole batch, G = F F^T with each row L2-normalised,
    l_i = sum_j (G^s_ij - G^t_ij)^2, loss = sum_i w_i l_i. The teacher is detached."""
    fs, ft = _rows(student.float()), _rows(teacher.detach().float())
    gs = F.normalize(fs @ fs.t(), dim=1)
    gt = F.normalize(ft @ ft.t(), dim=1)
    per_row = (gs - gt).pow(2).sum(1)
    return (weights.to(per_row.dtype) * per_row).sum()


def multi_level_mad(student_features, teacher_features, teacher_logits: torch.Tensor, max_size: int,
                    regions: bool) -> torch.Tensor:
    """Sum of MAD over matching feature levels, each pooled to at most max_size per axis."""
    total = teacher_logits.new_zeros((), dtype=torch.float32)
    entropy = predictive_entropy(teacher_logits, regions)  # once at full resolution, pooled to each level
    for fs, ft in zip(student_features, teacher_features):
        fs, ft = pool_to_grid(fs, max_size), pool_to_grid(ft, max_size)
        total = total + mad_loss(fs, ft, entropy_weights(entropy, tuple(fs.shape[2:])))
    return total
