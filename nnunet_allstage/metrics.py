"""Dice and HD95 with the BraTS conventions (documentation/evaluation.md).

* Both sets empty: Dice 1, HD95 0. Exactly one empty: Dice 0, HD95 373.13 mm (the BraTS maximum).
* HD95 as medpy (used by M3AE, RFNet, mmFormer): surface voxels are a mask minus its erosion (face connectivity);
  the distances from each surface to the other, in mm with the voxel spacing, are pooled and their 95th
  percentile is taken.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import bounding_box_to_slice, get_bbox_from_mask, pad_bbox
from scipy import ndimage

BRATS_MAX_HD95 = 373.13
BRATS_REGION_NAMES = {"whole tumor": "WT", "tumor core": "TC", "enhancing tumor": "ET"}


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    p, r = prediction.astype(bool), reference.astype(bool)
    total = p.sum() + r.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, r).sum() / total)


def _surface(mask: np.ndarray) -> np.ndarray:
    footprint = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=footprint, iterations=1)


def hd95(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> float:
    p, r = prediction.astype(bool), reference.astype(bool)
    if not p.any() and not r.any():
        return 0.0
    if not p.any() or not r.any():
        return BRATS_MAX_HD95
    # Every surface voxel lies in the bounding box of p | r, so distance transforms inside that box (one voxel
    # wider, for the erosion) give exactly the full-volume distances, at a fraction of the cost.
    box = bounding_box_to_slice(pad_bbox(get_bbox_from_mask(p | r), 1, p.shape))
    p, r = p[box], r[box]
    sp, sr = _surface(p), _surface(r)
    to_r = ndimage.distance_transform_edt(~sr, sampling=spacing)[sp]
    to_p = ndimage.distance_transform_edt(~sp, sampling=spacing)[sr]
    return float(np.percentile(np.concatenate([to_r, to_p]), 95))


def regions_from_dataset_json(dataset_json: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(short name, label values) of each evaluated region: the regions of a region-based dataset (WT/TC/ET
    for BraTS), otherwise each foreground label."""
    regions = []
    for name, value in dataset_json["labels"].items():
        if name == "background" or name == "ignore":
            continue
        values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        regions.append((BRATS_REGION_NAMES.get(name, name), values))
    return regions


def region_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float],
                   regions: list[tuple[str, tuple[int, ...]]]) -> dict[str, tuple[float, float]]:
    """{region: (Dice, HD95)} for label maps in one label convention."""
    out = {}
    for name, values in regions:
        p, r = np.isin(prediction, values), np.isin(reference, values)
        out[name] = (dice(p, r), hd95(p, r, spacing))
    return out


def psnr(mse, peak) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of a mean squared error against the signal range ``peak`` (numbers or
    tensors, element-wise)."""
    mse = torch.as_tensor(mse, dtype=torch.float32)
    peak = torch.as_tensor(peak, dtype=torch.float32)
    return 10 * torch.log10(peak.pow(2).clamp(min=1e-8) / mse.clamp(min=1e-10))
