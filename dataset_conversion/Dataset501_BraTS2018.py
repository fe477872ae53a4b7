"""BraTS 2018 -> nnUNet_raw/Dataset501_BraTS2018_FM1 (the FM percentage in the name follows --fm-ratio).

The paper's main benchmark.
Source: MICCAI_BraTS_2018_Data_Training (285 cases in HGG/ and LGG/, folders Brats18_*).
Split: split 3 of RFNet / M3AE (199 train, 29 validation, 57 test), shipped with nnunet-allstage.
FM ratio: 1 % of the training subjects keep all four sequences (2 of 199); every other one loses 1 to 3 of them
at random (seeded, recorded in modality_availability.json; validation subjects drawn the same way, separately).
The paper reports 1 %, 10 % and 50 %: --fm-ratio 0.1, --fm-ratio 0.5.
Labels: BraTS 2018 writes 1 necrosis / non-enhancing core, 2 edema, 4 enhancing tumour; nnU-Net trains on the
regions of its own convention (edema 1, necrosis 2, enhancing 3; its Dataset137). --to-portal maps predictions
back to 1/2/4 for the BraTS portal (`nnunet-allstage predict --brats-labels 2018` writes them so directly).

    python dataset_conversion/Dataset501_BraTS2018.py /data/MICCAI_BraTS_2018_Data_Training
    nnunet-allstage plan -d 501 && nnunet-allstage train -d 501 -f 0
    python dataset_conversion/Dataset501_BraTS2018.py --to-portal PREDICTIONS_FOLDER PORTAL_FOLDER
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
