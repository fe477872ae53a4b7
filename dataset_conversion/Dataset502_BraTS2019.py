"""BraTS 2019 -> nnUNet_raw/Dataset502_BraTS2019_FM1.

MICCAI_BraTS_2019_Data_Training: 335 cases in HGG/ and LGG/ (BraTS19_*). The missing-modality literature has no
public split of this year: a seeded random 70:10:20 split, recorded in modality_availability.json.
Labels 1 NCR/NET, 2 ED, 4 ET.

    python dataset_conversion/Dataset502_BraTS2019.py /data/MICCAI_BraTS_2019_Data_Training
"""
import sys
from functools import partial

from nnunet_allstage.conversion import convert_brats
from nnunet_allstage.conversion.script import dataset_script

DATASET_ID = 502
YEAR = "2019"
SPLIT = None
FM_RATIO = 0.01
LABEL_MAP = {0: 0, 1: 2, 2: 1, 4: 3}  # BraTS 2019 value -> nnU-Net value


def main(argv: list[str] | None = None) -> int:
    convert = partial(convert_brats, year=YEAR, split=SPLIT, label_map=LABEL_MAP)
    return dataset_script(__doc__, convert, dataset_id=DATASET_ID, fm_ratio=FM_RATIO, label_map=LABEL_MAP, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
