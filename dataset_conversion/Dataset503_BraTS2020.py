"""BraTS 2020, the paper's second benchmark -> nnUNet_raw/Dataset503_BraTS2020_FM1.

MICCAI_BraTS2020_TrainingData: 369 cases (BraTS20_Training_*; case 355's label file, W39_1998.09.19_Segm.nii, is
found too). The split of RFNet and mmFormer, shipped with the package: 219 train, 50 validation, 100 test.
Labels 1 NCR/NET, 2 ED, 4 ET.

    python dataset_conversion/Dataset503_BraTS2020.py /data/MICCAI_BraTS2020_TrainingData
"""
import sys
from functools import partial

from nnunet_allstage.conversion import convert_brats
from nnunet_allstage.conversion.script import dataset_script
from nnunet_allstage.conversion.splits import load_split

DATASET_ID = 503
YEAR = "2020"
SPLIT = load_split("brats2020")
FM_RATIO = 0.01
LABEL_MAP = {0: 0, 1: 2, 2: 1, 4: 3}  # BraTS 2020 value -> nnU-Net value


def main(argv: list[str] | None = None) -> int:
    convert = partial(convert_brats, year=YEAR, split=SPLIT, label_map=LABEL_MAP)
    return dataset_script(__doc__, convert, dataset_id=DATASET_ID, fm_ratio=FM_RATIO, label_map=LABEL_MAP, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
