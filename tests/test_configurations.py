"""The four stages and `predict` end to end with nnU-Net's other configurations, through the commands a user types:
`-c 2d` on the shared dataset, and the residual-encoder presets (`plan -pl nnUNetPlannerResEncM`) on the dataset
whose training set holds cases without labels (so that one run also proves conversion, planning and all four stages
with unlabelled cases). One iteration per stage. `train` runs as the user's process (it starts nnUNetv2_train per
stage; in the residual-encoder run it finds stages 1-3 trained, skips them and trains stage 4); `plan` and
`predict` run through the same entry point in the test's process, which saves an interpreter's start-up each."""
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytestmark = pytest.mark.slow

ONE_ITERATION = {"NNUNET_ALLSTAGE_ITERATIONS_PER_EPOCH": "1", "nnUNet_n_proc_DA": "0"}
STAGES = ("AllStageMAETrainer_1epoch", "AllStageHyperTrainer_1epoch", "AllStageMAEDATrainer_1epoch",
          "AllStageTrainer_1epoch")


def predict_case_missing_two(ws, tmp: Path, configuration: str, plans: str) -> tuple[Path, Path]:
    """`nnunet-allstage predict` on a test case whose T1 and T2 files are absent."""
    case = ws.test_case()
    inp, out = tmp / f"in_{configuration}", tmp / f"out_{configuration}"
    inp.mkdir()
    for channel in (0, 2):  # FLAIR and T1c only
        shutil.copy(ws.raw / "imagesTs" / f"{case}_{channel:04d}.nii.gz", inp)
    assert ws.main("predict", "-i", str(inp), "-o", str(out), "-d", str(ws.dataset_id), "-f", "0", "-c",
                    configuration, "-p", plans, "-tr", STAGES[-1], "-device", "cpu", "--disable_tta") == 0
    return ws.raw / "labelsTs" / f"{case}.nii.gz", out / f"{case}.nii.gz"


def train_and_predict(ws, tmp: Path, configuration: str, plans: str, validate_deployed: bool = False) -> dict:
    """All four stages, one iteration each, then `predict`. With ``validate_deployed``, stages 1-3 are trained first
    through nnUNetv2_train and `train` skips them and trains stage 4, which ends in nnU-Net's validation of the
    fold (the session's chain already validates stage 2)."""
    if validate_deployed:
        for trainer in STAGES[:-1]:
            ws.train(trainer, "-p", plans, env_extra=ONE_ITERATION)
    result = ws.cli("train", "-d", str(ws.dataset_id), "-f", "0", "-c", configuration, "-p", plans, "--schedule",
                    "1epoch", "-device", "cpu", "--no-validate",
                    env_extra={**ONE_ITERATION, "NNUNET_ALLSTAGE_FINAL_VALIDATION": str(int(validate_deployed))})
    if validate_deployed:
        assert re.findall(r"^\[skip\] (stage \d)", result.stdout, re.M) == ["stage 1", "stage 2", "stage 3"], \
            result.stdout
    for trainer in STAGES:
        assert (ws.output_folder(trainer, plans, configuration) / "checkpoint_final.pth").is_file()
    stage4 = torch.load(ws.output_folder(STAGES[-1], plans, configuration) / "checkpoint_final.pth",
                        map_location="cpu", weights_only=False)
    reference, prediction = predict_case_missing_two(ws, tmp, configuration, plans)
    ref, pred = sitk.ReadImage(str(reference)), sitk.ReadImage(str(prediction))
    assert ref.GetSize() == pred.GetSize() and np.allclose(ref.GetSpacing(), pred.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}
    record = json.loads((prediction.parent / "predictions.json").read_text())
    assert record["cases"][prediction.name[:-7]]["sequences"] == ["FLAIR", "T1c"]
    return stage4


def test_2d_configuration_end_to_end(workspace, tmp_path):
    assert workspace.main("plan", "-d", str(workspace.dataset_id), "-c", "2d") == 0
    stage4 = train_and_predict(workspace, tmp_path, "2d", "nnUNetPlans")
    # the hyper head follows the planned convolutions: its feature projection is a Conv2d weight (out, in, 1, 1)
    projection = [v for k, v in stage4["network_weights"].items() if k.endswith("feature_proj.2.weight")]
    assert len(projection) == 1 and projection[0].ndim == 4


def test_residual_encoder_plans_end_to_end_with_unlabelled_cases(unlabelled_workspace, tmp_path, capsys):
    ws = unlabelled_workspace
    record = json.loads((ws.raw / "modality_availability.json").read_text())
    dataset_json = json.loads((ws.raw / "dataset.json").read_text())
    assert len(record["unlabelled"]) == 3 and dataset_json["labels"]["ignore"] == 4
    assert not set(record["unlabelled"]) & set(record["split"]["val"] + record["split"]["test"])
    for case in record["unlabelled"]:  # an unlabelled case's label file is the ignore label alone
        assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(ws.raw / "labelsTr" / f"{case}.nii.gz"))))) \
            == {4}
    # at 2 mm these small images give a network of two resolution stages, whose deep-supervision loss nnU-Net makes
    # NaN: refused in one line before preprocessing
    capsys.readouterr()
    assert ws.main("plan", "-d", str(ws.dataset_id), "-pl", "nnUNetPlannerResEncM", "--target-spacing", "2", "2",
                    "2") == 2
    refused = capsys.readouterr()
    assert refused.err.strip().splitlines()[-1].startswith(
        "nnunet-allstage: error: plans nnUNetResEncUNetMPlans_2mm, 3d_fullres: the planned network has 2 resolution "
        "stages")
    # planned before from the same raw files: the fingerprint is not taken again
    assert f"reusing the dataset fingerprint of {ws.raw.name}" in refused.out
    assert ws.main("plan", "-d", str(ws.dataset_id), "-pl", "nnUNetPlannerResEncM", "--target-spacing", "1.5",
                    "1.5", "1.5") == 0
    plans = "nnUNetResEncUNetMPlans_1.5mm"
    stage4 = train_and_predict(ws, tmp_path, "3d_fullres", plans, validate_deployed=True)
    # the residual encoder's blocks are in the student's weights (ResidualEncoderUNet, not PlainConvUNet)
    assert any(".blocks." in k and k.startswith("encoder.stages") for k in stage4["network_weights"])
    assert any(".blocks." in k for k in stage4["allstage"].get("recovery_weights", {}))
    # stage 3 logged its two terms; nnU-Net's final validation of stage 4 ran on the labelled validation case
    stage3 = torch.load(ws.output_folder(STAGES[2], plans) / "checkpoint_final.pth", map_location="cpu",
                        weights_only=False)
    assert len(stage3["logging"]["train_rec_loss"]) == len(stage3["logging"]["train_seg_loss"]) == 1
    summary = json.loads((ws.output_folder(STAGES[3], plans) / "validation" / "summary.json").read_text())
    assert [c["reference_file"].split("/")[-1][:-7] for c in summary["metric_per_case"]] == record["split"]["val"]
