"""Label values: the BraTS tables of each era, nnU-Net's region convention, and relabelling by lookup table."""
from __future__ import annotations

from pathlib import Path

import numpy as np

# nnU-Net's BraTS region convention (its Dataset137): edema 1, necrosis/non-enhancing core 2, enhancing 3;
# training and evaluation run on the regions built from them.
NNUNET_BRATS_LABELS = {"edema": 1, "necrosis": 2, "enhancing": 3}
BRATS_REGION_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
BRATS_REGIONS_CLASS_ORDER = (1, 2, 3)
# the values BraTS itself uses: 2017-2021 (1 NCR/NET, 2 ED, 4 ET), 2023 on (1 NCR, 2 ED, 3 ET)
BRATS_LEGACY_LABELS = {"necrosis": 1, "edema": 2, "enhancing": 4}
BRATS_GLI_LABELS = {"necrosis": 1, "edema": 2, "enhancing": 3}


def to_nnunet_label_map(brats_labels: dict[str, int]) -> dict[int, int]:
    """BraTS value -> nnU-Net value (background stays 0)."""
    return {0: 0, **{value: NNUNET_BRATS_LABELS[tissue] for tissue, value in brats_labels.items()}}


def inverse_label_map(label_map: dict[int, int]) -> dict[int, int]:
    """nnU-Net value -> source value, for writing predictions in the source's labels (e.g. the BraTS portal)."""
    return {v: k for k, v in label_map.items()}


def relabel(labels: np.ndarray, label_map: dict[int, int]) -> np.ndarray:
    """Every value replaced through ``label_map`` (uint8); values the map lacks become 0."""
    lut = np.zeros(max(max(label_map), int(labels.max(initial=0))) + 1, dtype=np.uint8)
    for source, target in label_map.items():
        lut[source] = target
    return lut[labels.astype(np.int64)]


def relabel_folder(source: Path, target: Path, label_map: dict[int, int], file_ending: str = ".nii.gz") -> list[Path]:
    """Every segmentation of ``source`` written to ``target`` with its values mapped (e.g. nnU-Net predictions to
    the BraTS portal's labels); geometry and file names are kept. Returns the written files."""
    import SimpleITK as sitk
    from nnunet_allstage.errors import AllStageError
    files = sorted(p for p in Path(source).iterdir() if p.name.endswith(file_ending)) if Path(source).is_dir() else []
    if not files:
        raise AllStageError(f"{source}: no {file_ending} segmentation to relabel")
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        image = sitk.ReadImage(str(path))
        values = sitk.GetArrayViewFromImage(image)
        unknown = sorted(set(np.unique(values).tolist()) - set(label_map))
        if unknown:
            raise AllStageError(f"{path.name} holds value(s) {unknown} that the label map {label_map} does not know")
        out = sitk.GetImageFromArray(relabel(values, label_map))
        out.CopyInformation(image)
        sitk.WriteImage(out, str(target / path.name), useCompression=True)
        written.append(target / path.name)
    return written
