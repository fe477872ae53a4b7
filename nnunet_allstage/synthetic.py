"""Deterministic synthetic brain-tumour MRI in the BraTS 2020 folder layout.

Each case is a brain (white matter, grey matter, ventricles) with a tumour made of peritumoral edema, a
necrotic core and an enhancing rim. The four sequences differ the way real ones do, so that dropping one
removes real information:

=============  =====  =====  ====  ====  =====  ====  ====
tissue         label  FLAIR  T1    T1c   T2
=============  =====  =====  ====  ====  =====  ====  ====
white matter   -      0.45   0.85  0.85  0.35
grey matter    -      0.60   0.60  0.60  0.55
CSF            -      0.10   0.20  0.20  1.00
edema          2      1.25   0.50  0.50  0.95
necrosis       1      0.70   0.30  0.15  1.15
enhancing rim  4      0.80   0.55  1.60  0.70
=============  =====  =====  ====  ====  =====  ====  ====

Only T1c separates the enhancing rim from necrosis sharply; edema stands out in FLAIR and T2 only.
Every image gets Rician-like noise and its own smooth multiplicative bias field.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_allstage.conversion.labels import BRATS_LEGACY_LABELS

SEQUENCES = ("flair", "t1", "t1ce", "t2")
TISSUE_INTENSITY = {  # FLAIR, T1, T1c, T2
    "wm": (0.45, 0.85, 0.85, 0.35),
    "gm": (0.60, 0.60, 0.60, 0.55),
    "csf": (0.10, 0.20, 0.20, 1.00),
    "edema": (1.25, 0.50, 0.50, 0.95),
    "necrosis": (0.70, 0.30, 0.15, 1.15),
    "enhancing": (0.80, 0.55, 1.60, 0.70),
}
DEFAULT_SHAPE = (64, 72, 56)  # x, y, z voxels at 1 mm


def _grid(shape):
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    return np.meshgrid(*axes, indexing="ij")


def _smooth_field(rng, shape, strength):
    """Low-order polynomial field around 1, different per image."""
    x, y, z = _grid(shape)
    c = rng.normal(0, strength, 6)
    return (1 + c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * x ** 2 + c[5] * z ** 2).clip(0.6, 1.4)


def make_case(seed: int, shape=DEFAULT_SHAPE) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(images by BraTS sequence suffix, BraTS label map), arrays indexed x, y, z."""
    rng = np.random.default_rng(seed)
    x, y, z = _grid(shape)
    radii = rng.uniform(0.78, 0.88, 3)
    brain_r = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2)
    brain = brain_r < 1
    code = {name: i + 1 for i, name in enumerate(TISSUE_INTENSITY)}
    tissue = np.zeros(shape, dtype=np.uint8)
    tissue[brain] = code["wm"]
    tissue[brain & (brain_r > 0.8)] = code["gm"]  # cortex
    ventricles = ((x / 0.12) ** 2 + (y / 0.3) ** 2 + (z / 0.15) ** 2) < 1
    tissue[brain & ventricles] = code["csf"]

    centre = rng.uniform(-0.35, 0.35, 3)
    centre[0] = rng.choice([-1, 1]) * rng.uniform(0.3, 0.45)  # one hemisphere, off the ventricles
    d = np.sqrt(((x - centre[0]) / rng.uniform(0.8, 1.2)) ** 2 + ((y - centre[1]) / rng.uniform(0.8, 1.2)) ** 2
                + ((z - centre[2]) / rng.uniform(0.8, 1.2)) ** 2)
    wobble = 1 + 0.15 * np.sin(3 * x + rng.uniform(0, 6)) * np.cos(2 * y + rng.uniform(0, 6))
    d = d * wobble
    core_r = rng.uniform(0.2, 0.3)
    labels = np.zeros(shape, dtype=np.uint8)
    regions = {"edema": (d < core_r + rng.uniform(0.12, 0.2)) & brain,
               "enhancing": (d < core_r) & brain,
               "necrosis": (d < core_r * rng.uniform(0.45, 0.65)) & brain}
    for name in ("edema", "enhancing", "necrosis"):  # inner regions overwrite outer ones
        tissue[regions[name]] = code[name]
        labels[regions[name]] = BRATS_LEGACY_LABELS[name]

    images = {}
    for channel, seq in enumerate(SEQUENCES):
        lut = np.array([0.0] + [v[channel] for v in TISSUE_INTENSITY.values()], dtype=np.float32)
        img = lut[tissue]
        img *= _smooth_field(rng, shape, 0.08)
        noise = rng.normal(0, 0.05, (2,) + shape).astype(np.float32)
        img = np.sqrt((img + noise[0]) ** 2 + noise[1] ** 2)  # magnitude image: Rician noise
        img[~brain] = 0  # skull-stripped, as BraTS
        images[seq] = np.round(img * 1000).astype(np.int16)
    return images, labels


def write_synthetic_brats(root: str | Path, num_cases: int = 12, seed: int = 0, shape=DEFAULT_SHAPE,
                          spacing=(1.0, 1.0, 1.0)) -> Path:
    """Writes ``root/MICCAI_BraTS2020_TrainingData/BraTS20_Training_XXX/...`` and returns that folder."""
    out = Path(root) / "MICCAI_BraTS2020_TrainingData"
    for i in range(1, num_cases + 1):
        case = f"BraTS20_Training_{i:03d}"
        folder = out / case
        folder.mkdir(parents=True, exist_ok=True)
        images, labels = make_case(seed * 100003 + i, shape)
        for name, arr in list(images.items()) + [("seg", labels)]:
            img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))  # sitk wants z, y, x
            img.SetSpacing(spacing)
            sitk.WriteImage(img, str(folder / f"{case}_{name}.nii.gz"), useCompression=True)
    return out
