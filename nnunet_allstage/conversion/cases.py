"""Checking and writing one case (run in worker processes, hence plain top-level functions)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_allstage.conversion.labels import relabel
from nnunet_allstage.conversion.sources import SourceCase
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.image_io import geometry, read_image, same_grid

FILE_ENDING = ".nii.gz"


@dataclass
class CaseJob:
    case: SourceCase
    modalities: tuple[str, ...]
    needs_label: bool
    allowed_labels: frozenset[int]
    label_map: dict[int, int] | None
    available: tuple[int, ...] = ()  # filled in after the check pass (and the FM simulation)
    out_images: Path | None = None
    out_labels: Path | None = None
    # an unlabelled training case: its label file is written all ignore (nnU-Net's ignore label), whatever the source
    ignore_label: int | None = None


@dataclass
class CheckResult:
    case_id: str
    error: str | None = None
    all_zero: list[str] = field(default_factory=list)


def check_case(job: CaseJob) -> CheckResult:
    case = job.case
    try:
        files = [(m, f) for m, f in case.modality_files.items() if f is not None]
        if not files:
            raise AllStageError(f"case {case.case_id}: no modality file found in {case.folder}")
        reference = None
        result = CheckResult(case.case_id)
        for modality, path in files:
            img = read_image(path, case.case_id)
            if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
                raise AllStageError(f"case {case.case_id}: {path.name} is not a 3D scalar image "
                                    f"({img.GetDimension()}D, {img.GetNumberOfComponentsPerPixel()} component(s))")
            arr = sitk.GetArrayViewFromImage(img)
            if not np.isfinite(arr).all():
                raise AllStageError(f"case {case.case_id}: {path.name} contains NaN or infinite values")
            if not arr.any():
                result.all_zero.append(modality)
            if reference is None:
                reference = (path, geometry(img))
            else:
                problem = same_grid(reference[1], geometry(img))
                if problem:
                    raise AllStageError(f"case {case.case_id}: {path.name} is not on the grid of "
                                        f"{reference[0].name}: {problem}")
        if len(result.all_zero) == len(files):
            raise AllStageError(f"case {case.case_id}: every modality image is all zero (an empty case)")
        if result.all_zero:
            raise AllStageError(f"case {case.case_id}: {case.modality_files[result.all_zero[0]].name} is all zero; "
                                f"delete the file so that {result.all_zero[0]} is recorded as missing")
        if case.label_file is None:
            if job.needs_label:
                raise AllStageError(f"case {case.case_id}: no label file in {case.folder}")
        else:
            seg = read_image(case.label_file, case.case_id)
            problem = same_grid(reference[1], geometry(seg))
            if problem:
                raise AllStageError(f"case {case.case_id}: label {case.label_file.name} is not on the image grid: "
                                    f"{problem}")
            values = np.unique(sitk.GetArrayViewFromImage(seg))
            if not np.all(np.isfinite(values)) or not np.all(np.equal(np.mod(values, 1), 0)):
                raise AllStageError(f"case {case.case_id}: label {case.label_file.name} has non-integer values")
            bad = sorted(set(values.astype(int).tolist()) - set(job.allowed_labels))
            if bad:
                raise AllStageError(f"case {case.case_id}: label {case.label_file.name} has value(s) {bad}; "
                                    f"expected only {sorted(job.allowed_labels)}")
        return result
    except AllStageError as e:
        return CheckResult(case.case_id, error=str(e))


def write_case(job: CaseJob) -> str:
    case = job.case
    reference_path = next(f for f in case.modality_files.values() if f is not None)
    reference = sitk.ReadImage(str(reference_path))  # verified by check_case
    for channel, modality in enumerate(job.modalities):
        out = job.out_images / f"{case.case_id}_{channel:04d}{FILE_ENDING}"
        src = case.modality_files.get(modality)
        if src is not None and job.available[channel]:
            img = sitk.ReadImage(str(src)) if src != reference_path else reference
            if geometry(img) != geometry(reference) or not src.name.lower().endswith(FILE_ENDING):
                img.CopyInformation(reference)  # within tolerance: make the grids exactly equal for nnU-Net
                sitk.WriteImage(img, str(out), useCompression=True)
            else:
                shutil.copyfile(src, out)
        else:
            zero = sitk.Image(reference.GetSize(), reference.GetPixelID())
            zero.CopyInformation(reference)
            sitk.WriteImage(zero, str(out), useCompression=True)
    if job.ignore_label is not None:
        seg = sitk.Image(reference.GetSize(), sitk.sitkUInt8) + job.ignore_label
        seg.CopyInformation(reference)
        sitk.WriteImage(seg, str(job.out_labels / f"{case.case_id}{FILE_ENDING}"), useCompression=True)
    elif case.label_file is not None and job.out_labels is not None:
        seg = sitk.ReadImage(str(case.label_file))
        arr = sitk.GetArrayFromImage(seg)
        if job.label_map is not None:
            arr = relabel(arr, job.label_map)
        out_seg = sitk.GetImageFromArray(arr.astype(np.uint8))
        out_seg.CopyInformation(reference)
        sitk.WriteImage(out_seg, str(job.out_labels / f"{case.case_id}{FILE_ENDING}"), useCompression=True)
    return case.case_id
