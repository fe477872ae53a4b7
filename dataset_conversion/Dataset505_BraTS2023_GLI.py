"""BraTS 2023 adult glioma (GLI) -> nnUNet_raw/Dataset505_BraTS2023_FM1.

ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData: 1251 cases, the naming of every BraTS since 2023 (folders
BraTS-GLI-xxxxx-xxx, files -t2f, -t1n, -t1c, -t2w, -seg). No public missing-modality split: seeded random 70:10:20.
Labels 1 NCR, 2 SNFH (edema), 3 ET.

    python dataset_conversion/Dataset505_BraTS2023_GLI.py /data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData
"""
import sys
from functools import partial

from nnunet_allstage.conversion import convert_brats
from nnunet_allstage.conversion.script import dataset_script

DATASET_ID = 505
YEAR = "2023"
SPLIT = None
FM_RATIO = 0.01
LABEL_MAP = {0: 0, 1: 2, 2: 1, 3: 3}  # BraTS 2023 value -> nnU-Net value


def main(argv: list[str] | None = None) -> int:
    convert = partial(convert_brats, year=YEAR, split=SPLIT, label_map=LABEL_MAP)
    return dataset_script(__doc__, convert, dataset_id=DATASET_ID, fm_ratio=FM_RATIO, label_map=LABEL_MAP, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
