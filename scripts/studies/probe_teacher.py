#!/usr/bin/env python
"""Stage 4's teacher scored on its own: does co-distillation have anything to teach the student?

For a trained stage-4 model folder (AllStageTrainer__PLANS__CONFIG), evaluates on test cases with every sequence,
over the 15 input combinations: the stage-2 model as deployed (the case's code, missing channels zero), the same
frozen model in full-modality mode on zeros, in full-modality mode on g's fill-ins (stage 4's KD target and
L_data's input), and the stage-4 student. Prints the paper-shaped table and, on the 14 incomplete combinations,
each model's paired per-case difference to the stage-2 model (see teacher_probe.py beside this script).

    python scripts/studies/probe_teacher.py --stage4 RESULTS/Dataset902_X/AllStageTrainer__nnUNetPlans_4mm__3d_fullres \\
        -f all --test RAW/Dataset903_Y -o probe_out
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage4", required=True,
                        help="a trained AllStageTrainer model folder (Trainer__Plans__Config)")
    parser.add_argument("-f", "--fold", default="0")
    parser.add_argument("--test", required=True,
                        help="an nnU-Net raw dataset folder whose imagesTs/labelsTs (where they hold cases, else "
                             "imagesTr/labelsTr) hold test cases with every sequence")
    parser.add_argument("-o", "--output", default="probe_output")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from nnunet_allstage.environment import trainer_shim_dir
    from nnunet_allstage.errors import AllStageError
    from nnunet_allstage.evaluation import evaluate, find_test_cases
    from nnunet_allstage.inference import load_model
    from nnunet_allstage.modalities import combinations
    from teacher_probe import format_probe_summary, probe_models, probe_summary

    os.environ["nnUNet_extTrainer"] = str(trainer_shim_dir())
    test = Path(args.test)
    images, labels = (test / "imagesTs", test / "labelsTs") if any((test / "imagesTs").glob("*_0000.*")) else \
        (test / "imagesTr", test / "labelsTr")
    device = torch.device(args.device)
    try:
        models = probe_models(Path(args.stage4), args.fold, device, args.checkpoint)
        models.append(load_model(Path(args.stage4), args.fold, args.checkpoint, device, False,
                                 "stage 4 student (deployed)"))
        num_modalities = models[0].predictor.network.num_modalities
        cases = find_test_cases(images, labels, models[0].predictor.dataset_json["file_ending"], num_modalities)
        out = Path(args.output)
        evaluate(models, cases, combinations(num_modalities), out)
    except AllStageError as e:
        sys.exit(f"error: {e}")
    table = format_probe_summary(probe_summary(pd.read_csv(out / "results.csv"), models[0].name))
    (out / "probe_summary.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
