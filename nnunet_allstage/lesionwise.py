"""The BraTS challenges' lesion-wise metrics, through the official `brats-evaluation` package (built on panoptica).

Optional: ``pip install "nnunet-allstage[brats]"``. Each region (WT, TC, ET) is split into lesions (connected
components), predicted and reference lesions are matched, and the package reports per region: the lesion-wise
Dice and HD95 (means over the matched lesions, its ``sq_dsc`` / ``sq_hd95``, which its parser reports as
``lesionwise_*_mean``) and the detection F1 of the matching (``rq``), which is where missed and spurious lesions
show. Conventions of the package kept as they are: a region empty in both reference and prediction gives no value
(NaN, left out of means); a region with no matched lesion scores Dice 0 and HD95 infinite, written as 373.13 mm,
the BraTS maximum our case-wise HD95 uses too.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from nnunet_allstage.conversion.labels import relabel
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.metrics import BRATS_MAX_HD95

# nnU-Net's region values (edema 1, necrosis 2, enhancing 3) -> the BraTS 2023 glioma labels the package expects
GLI_FROM_NNUNET = {0: 0, 1: 2, 2: 1, 3: 3}
GROUP_OF_REGION = {"WT": "wt", "TC": "tc", "ET": "et"}  # our region names -> the package's groups
METRICS = ("lesion_dice", "lesion_hd95", "lesion_f1")


def load_evaluator(region_names) -> object:
    """The package's evaluator for BraTS glioma; a clear error when the extra is missing or the labels differ."""
    unknown = [r for r in region_names if r not in GROUP_OF_REGION]
    if unknown:
        raise AllStageError(f"lesion-wise metrics are defined for the BraTS glioma regions ({', '.join(GROUP_OF_REGION)}); "
                            f"this dataset has {', '.join(unknown)}")
    try:
        from brats_evaluation import config_path
        from panoptica import Panoptica_Evaluator
    except ImportError:
        raise AllStageError("--metrics lesionwise needs the official BraTS evaluation package: "
                            "pip install \"nnunet-allstage[brats]\" (brats-evaluation)") from None
    return Panoptica_Evaluator.load_from_config(str(config_path("gli")))


def lesionwise_metrics(evaluator, prediction: np.ndarray, reference: np.ndarray, spacing,
                       region_names) -> dict[str, dict[str, float]]:
    """{region: {lesion_dice, lesion_hd95, lesion_f1}} of one segmentation in nnU-Net's region values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # panoptica warns about its surface-Dice default on every call
        results = evaluator.evaluate(relabel(prediction, GLI_FROM_NNUNET), relabel(reference, GLI_FROM_NNUNET),
                                     voxelspacing=tuple(float(s) for s in spacing), verbose=False)
    out = {}
    for region in region_names:
        values = results[GROUP_OF_REGION[region]].to_dict(True)
        hd95 = float(values.get("sq_hd95", math.nan))
        out[region] = {"lesion_dice": float(values.get("sq_dsc", math.nan)),
                       "lesion_hd95": BRATS_MAX_HD95 if math.isinf(hd95) else hd95,
                       "lesion_f1": float(values.get("rq", math.nan))}
    return out
