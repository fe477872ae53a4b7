"""Your own multi-sequence data, with sequences really missing -> nnUNet_raw/Dataset599_MyGlioma.

Copy this file and edit the settings below. The layout it expects: one folder per case under the source folder,
the case's images and label inside, found by the glob patterns of MODALITIES and LABEL ({case} stands for the
folder's name). A sequence a case lacks has no file: it is recorded as missing in modality_availability.json and
written as an all-zero image, so the data are kept as they are (FM_RATIO None: nothing is simulated).
Every file is checked first (readable, 3D, finite, on one grid, label values known); a bad case stops the
conversion with its reason (--skip-bad in `nnunet-allstage convert-folder` skips and lists such cases instead).

    python dataset_conversion/Dataset599_OwnFolder.py /data/my_glioma_cases
    nnunet-allstage plan -d 599 && nnunet-allstage train -d 599 -f 0
    python dataset_conversion/Dataset599_OwnFolder.py --to-portal PREDICTIONS_FOLDER OUTPUT_FOLDER
"""
import sys
from functools import partial

from nnunet_allstage.conversion import convert_folder
from nnunet_allstage.conversion.script import dataset_script

DATASET_ID = 599
NAME = "MyGlioma"
# channel order = the order listed here; any names and any number (at least two) of sequences
MODALITIES = {"FLAIR": "*_flair.nii.gz", "T1": "*_t1.nii.gz", "T1c": "*_t1ce.nii.gz", "T2": "*_t2.nii.gz"}
LABEL = "*_seg.nii.gz"
# BraTS-style tumour labels trained as nested regions, as nnU-Net's BraTS datasets are
LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
REGIONS_CLASS_ORDER = [1, 2, 3]
LABEL_MAP = {0: 0, 1: 2, 2: 1, 4: 3}  # your label value -> nnU-Net value; None keeps the values as they are
FM_RATIO = None  # e.g. 0.1 to simulate missing sequences on complete data instead
SPLIT = None  # a seeded random 70:10:20 split; or {"train": [...], "val": [...], "test": [...]} of case folders


def main(argv: list[str] | None = None) -> int:
    config = {"modalities": MODALITIES, "label": LABEL, "labels": LABELS, "regions_class_order": REGIONS_CLASS_ORDER,
              "label_map": LABEL_MAP}
    split = None if SPLIT is None else {"name": "Dataset599_OwnFolder.py", **SPLIT}
    convert = partial(convert_folder, config=config, name=NAME, split=split)
    return dataset_script(__doc__, convert, dataset_id=DATASET_ID, fm_ratio=FM_RATIO, label_map=LABEL_MAP, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
