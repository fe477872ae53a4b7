"""BraTS 2023 adult glioma -> nnUNet_raw/Dataset505_BraTS2023_FM1 (FM percentage: --fm-ratio).

The GLI challenge; its file naming is used by every BraTS since 2023.
Source: ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData (1251 cases, folders BraTS-GLI-xxxxx-xxx, files -t2f,
-t1n, -t1c, -t2w, -seg).
Split: no public split of the missing-modality literature; a seeded random 70:10:20 split (recorded).
FM ratio: 1 % of the training subjects keep all four sequences (9 of about 876); every other one loses 1 to 3 of them
at random (seeded, recorded in modality_availability.json; validation subjects drawn the same way, separately).
The paper reports 1 %, 10 % and 50 %: --fm-ratio 0.1, --fm-ratio 0.5.
Labels: BraTS 2023 writes 1 necrosis (NCR), 2 edema (SNFH), 3 enhancing tumour; nnU-Net trains on the regions of
its own convention (edema 1, necrosis 2, enhancing 3; its Dataset137). --to-portal maps predictions back to 1/2/3
for the Synapse portal (`nnunet-allstage predict --brats-labels 2023` writes them so directly).

    python dataset_conversion/Dataset505_BraTS2023_GLI.py /data/ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData
    nnunet-allstage plan -d 505 && nnunet-allstage train -d 505 -f 0
    python dataset_conversion/Dataset505_BraTS2023_GLI.py --to-portal PREDICTIONS_FOLDER PORTAL_FOLDER
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
