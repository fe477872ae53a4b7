"""BraTS 2021 (RSNA-ASNR-MICCAI) -> nnUNet_raw/Dataset504_BraTS2021_FM1.

RSNA_ASNR_MICCAI_BraTS2021_TrainingData: 1251 cases (BraTS2021_*), no public missing-modality split: a seeded
random 70:10:20 split. Labels 1 NCR/NET, 2 ED, 4 ET, as in 2017-2020.

    python dataset_conversion/Dataset504_BraTS2021.py /data/RSNA_ASNR_MICCAI_BraTS2021_TrainingData
"""
import sys
from functools import partial

from nnunet_allstage.conversion import convert_brats
from nnunet_allstage.conversion.script import dataset_script

DATASET_ID = 504
YEAR = "2021"
SPLIT = None
FM_RATIO = 0.01
LABEL_MAP = {0: 0, 1: 2, 2: 1, 4: 3}  # BraTS 2021 value -> nnU-Net value


def main(argv: list[str] | None = None) -> int:
    convert = partial(convert_brats, year=YEAR, split=SPLIT, label_map=LABEL_MAP)
    return dataset_script(__doc__, convert, dataset_id=DATASET_ID, fm_ratio=FM_RATIO, label_map=LABEL_MAP, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
