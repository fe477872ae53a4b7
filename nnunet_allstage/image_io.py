"""Reading images safely. SimpleITK reads a truncated NIfTI file without an error (the missing voxels become
zeros) and reads NaN voxels of a NIfTI file as 0, so every NIfTI file is first read through nibabel, which
raises on a short stream and keeps NaN/Inf, before SimpleITK reads it."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_allstage.errors import AllStageError

GEOMETRY_ATOL = 1e-3  # mm / direction cosines: tolerance for "the same grid"


def is_nifti(path: Path) -> bool:
    return path.name.endswith((".nii", ".nii.gz"))


def verify_nifti(path: Path, case_id: str) -> None:
    """One-line error naming the case and file if the file is truncated or corrupt, or holds NaN/Inf voxels."""
    import nibabel as nib
    try:
        data = np.asanyarray(nib.load(str(path)).dataobj)
    except (EOFError, OSError, zlib.error, ValueError, nib.filebasedimages.ImageFileError) as e:
        reason = str(e).strip().splitlines()[0]
        raise AllStageError(f"case {case_id}: {path} is truncated or corrupt ({reason}); copy the file again") \
            from None
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise AllStageError(f"case {case_id}: {path} has {bad} NaN or infinite voxel(s); replace them (e.g. by 0) "
                                f"or exclude the case")


def verify_image_file(path: Path, case_id: str) -> None:
    """The checks SimpleITK does not make, for the formats where they are known to be needed (NIfTI)."""
    if is_nifti(path):
        verify_nifti(path, case_id)


def read_image(path: Path, case_id: str) -> sitk.Image:
    """SimpleITK image of a verified file; unreadable, truncated or NaN-holding files are one-line errors."""
    verify_image_file(path, case_id)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[-1].split("sitk::ERROR:")[-1].strip()
        raise AllStageError(f"case {case_id}: {path} cannot be read as an image ({reason})") from None


def geometry(img: sitk.Image) -> tuple:
    return img.GetSize(), img.GetSpacing(), img.GetOrigin(), img.GetDirection()


def same_grid(a: tuple, b: tuple) -> str | None:
    """None if two geometries (from `geometry`) describe the same grid, else what differs."""
    if a[0] != b[0]:
        return f"size {b[0]} differs from {a[0]}"
    for name, x, y in (("spacing", a[1], b[1]), ("origin", a[2], b[2]), ("direction", a[3], b[3])):
        if not np.allclose(x, y, rtol=0, atol=GEOMETRY_ATOL):
            return f"{name} {tuple(round(v, 4) for v in y)} differs from {tuple(round(v, 4) for v in x)}"
    return None
