"""Reconstruction preview PNGs (the paper's Fig. 3): input, masked input, reconstruction, ground truth."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nnunet_allstage.masking import mask_input, modality_dropout, zero_missing


def _centred_patch(data: np.ndarray, seg: np.ndarray, patch_size) -> np.ndarray:
    """A patch of the planned size around the foreground centre (or the volume centre), zero-padded. A 2d
    configuration's patch comes from the slice (first axis, as nnU-Net's 2d slices) through that centre."""
    fg = np.argwhere(np.asarray(seg[0]) > 0)
    centre = fg.mean(0).round().astype(int) if len(fg) else np.array(data.shape[1:]) // 2
    if len(patch_size) == data.ndim - 2:
        data, centre = data[:, int(centre[0])], centre[1:]
    spatial = data.shape[1:]
    out = np.zeros((data.shape[0], *patch_size), dtype=np.float32)
    src, dst = [], []
    for c, p, s in zip(centre, patch_size, spatial):
        start = int(c) - p // 2
        lo, hi = max(start, 0), min(start + p, s)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[(slice(None), *dst)] = np.asarray(data[(slice(None), *src)])
    return out


@torch.no_grad()
def write_reconstruction_preview(trainer, dataset, key: str, out: Path, seed: int = 0) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data, seg, _, _ = dataset.load_case(key)
    patch = torch.from_numpy(_centred_patch(np.asarray(data), np.asarray(seg),
                                            trainer.configuration_manager.patch_size))[None].to(trainer.device)
    available = trainer.batch_availability([key])
    patch = zero_missing(patch, available)
    generator = torch.Generator(device=trainer.device).manual_seed(seed)
    cfg = trainer.allstage_config
    kept = modality_dropout(available, generator, cfg.full_set_p) if cfg.modality_dropout == "uniform" else available
    masked = mask_input(patch, kept, cfg.mask_patch_size, cfg.mask_ratio, generator=generator)
    with trainer.autocast():
        reconstruction = trainer.network(masked).float()
    # a 3d patch is shown by its middle slice; a 2d patch is the slice
    middle = (patch.shape[2] // 2,) if patch.ndim == 5 else ()
    columns = ["input (after MDrop)", "masked input", "reconstruction", "ground truth"]
    names = trainer.modality_names
    fig, axes = plt.subplots(len(names), 4, figsize=(10, 2.6 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        at = (0, row, *middle)
        gt = patch[at].cpu().numpy()
        lo, hi = (np.percentile(gt, 1), np.percentile(gt, 99)) if available[0, row] else (-2, 3)
        panels = [zero_missing(patch, kept)[at], masked[at], reconstruction[at], patch[at]]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel.cpu().numpy().T, cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(columns[col], fontsize=9)
            if col == 0:
                ax.set_ylabel(name + ("" if kept[0, row] else " (dropped)"), fontsize=9)
            if col == 3 and not available[0, row]:
                ax.text(0.5, 0.5, "missing in data:\nno ground truth", ha="center", va="center", color="red",
                        transform=ax.transAxes, fontsize=9)
    fig.suptitle(f"{key}: {trainer.stage_name}, epoch {trainer.current_epoch}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
