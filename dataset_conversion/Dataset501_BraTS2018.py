"""BraTS 2018, the paper's main benchmark -> nnUNet_raw/Dataset501_BraTS2018_FM1.

MICCAI_BraTS_2018_Data_Training: 285 cases in HGG/ and LGG/ (Brats18_*). Split 3 of RFNet and M3AE, shipped with
the package: 199 train, 29 validation, 57 test. At 1 % FM, 2 of the 199 training subjects keep every sequence.
Labels 1 NCR/NET, 2 ED, 4 ET.

    python dataset_conversion/Dataset501_BraTS2018.py /data/MICCAI_BraTS_2018_Data_Training
"""
import sys
from functools import partial

from nnunet_allstage.conversion import convert_brats
from nnunet_allstage.conversion.script import dataset_script
from nnunet_allstage.conversion.splits import load_split

DATASET_ID = 501
YEAR = "2018"
SPLIT = load_split("brats2018")
FM_RATIO = 0.01
LABEL_MAP = {0: 0, 1: 2, 2: 1, 4: 3}  # BraTS 2018 value -> nnU-Net value


def main(argv: list[str] | None = None) -> int:
    convert = partial(convert_brats, year=YEAR, split=SPLIT, label_map=LABEL_MAP)
    return dataset_script(__doc__, convert, dataset_id=DATASET_ID, fm_ratio=FM_RATIO, label_map=LABEL_MAP, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
