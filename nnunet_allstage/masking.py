"""Modality dropout (MDrop) and the MAE's MASK(x): batched torch operations, no loops over samples."""
from __future__ import annotations

import torch


def modality_dropout(available: torch.Tensor, generator: torch.Generator | None = None,
                     full_set_probability: float | None = None) -> torch.Tensor:
    """For each row of ``available`` (B, M) in {0,1}, one non-empty subset of its available modalities. By default
    uniformly over all such subsets (the full available set is one of them); with ``full_set_probability`` p, the
    whole available set with probability p and otherwise uniformly over its proper non-empty subsets (a row with
    a single available modality has none and keeps it). Rejection sampling of uniform random subsets is exactly
    uniform over the accepted ones; a row with nothing available is left as it is."""
    available = available.bool()
    code = torch.zeros_like(available)
    todo = available.any(1)
    keep_all = torch.zeros_like(todo)
    if full_set_probability is not None:
        single = available.sum(1) == 1
        keep_all = todo & ((torch.rand(todo.shape, generator=generator, device=available.device)
                            < full_set_probability) | single)
        code[keep_all] = available[keep_all]
        todo &= ~keep_all
    while todo.any():
        draw = torch.rand(available.shape, generator=generator, device=available.device) < 0.5
        draw &= available
        proper = draw.any(1) & ((draw != available).any(1) if full_set_probability is not None else True)
        accept = todo & proper
        code[accept] = draw[accept]
        todo &= ~accept
    return code.to(torch.float32)


def zero_missing(data: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Zero the channels whose code is 0; ``data`` (B, M, *spatial), ``code`` (B, M)."""
    return data * code.view(*code.shape, *([1] * (data.ndim - 2))).to(data.dtype)


def patch_mask(shape: tuple[int, ...], kept: torch.Tensor, patch_size: int, mask_ratio: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Visibility mask (B, M, *spatial) in {0,1}: the kept modalities of each sample are cut into cubic patches
    and ``mask_ratio`` of all their patches, pooled over modalities, are hidden (each modality gets its own
    mask, as in M3AE); at least one patch stays visible. Dropped modalities are fully hidden."""
    b, m, *spatial = shape
    grid = [-(-s // patch_size) for s in spatial]
    num_patches = int(torch.tensor(grid).prod())
    kept = kept.bool()
    scores = torch.rand((b, m, num_patches), generator=generator, device=kept.device)
    scores = scores.masked_fill(~kept[:, :, None], float("inf")).view(b, -1)
    n_visible = ((1 - mask_ratio) * kept.sum(1) * num_patches).round().clamp(min=1).long()
    rank = scores.argsort(1).argsort(1)
    visible = (rank < n_visible[:, None]).view(b, m, *grid) & kept.view(b, m, *([1] * len(grid)))
    for axis, size in enumerate(spatial):
        visible = visible.repeat_interleave(patch_size, dim=2 + axis).narrow(2 + axis, 0, size)
    return visible.to(torch.float32)


def mask_input(data: torch.Tensor, kept: torch.Tensor, patch_size: int, mask_ratio: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """MASK(x) of Eq. 1 once MDrop has chosen the ``kept`` modalities (B, M): patch masking of the kept
    modalities, everything else zero."""
    return data * patch_mask(tuple(data.shape), kept, patch_size, mask_ratio, generator).to(data.dtype)


def fill_missing(data: torch.Tensor, available: torch.Tensor, recovered: torch.Tensor) -> torch.Tensor:
    """x_f = a * x + (1 - a) * x_hat: available channels pass through bit-identical, missing ones are filled."""
    mask = available.bool().view(*available.shape, *([1] * (data.ndim - 2)))
    return torch.where(mask, data, recovered.to(data.dtype))
