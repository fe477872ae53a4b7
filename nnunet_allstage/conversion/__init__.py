"""Conversion of multi-sequence datasets (BraTS of any year, or a user's own folders) to nnU-Net format.

The result (documentation/dataset_conversion.md): ``nnUNet_raw/DatasetXXX_Name/{imagesTr,labelsTr,imagesTs,labelsTs}``, one file
per modality in dataset order, a missing modality written as an all-zero image on the case's grid, and
``modality_availability.json`` beside dataset.json.

Modules: ``sources`` (BraTS layouts, a user's folders, finding cases), ``labels`` (label tables, relabelling),
``splits`` (shipped and random splits), ``cases`` (checking and writing one case), ``dataset`` (the whole
conversion; its entry points ``convert_brats`` and ``convert_folder`` are re-exported here). The FM-ratio
simulation is method logic and lives with the availability code in ``nnunet_allstage.modalities``.
"""
from nnunet_allstage.conversion.dataset import convert_brats, convert_dataset, convert_folder

__all__ = ["convert_brats", "convert_dataset", "convert_folder"]
