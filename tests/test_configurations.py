"""The four stages and `predict` end to end with nnU-Net's other configurations: `-c 2d`, and the residual-encoder
presets (`plan -pl nnUNetPlannerResEncM`), through the command a user types."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytestmark = pytest.mark.slow

FAST = {"NNUNET_ALLSTAGE_ITERATIONS_PER_EPOCH": "2", "NNUNET_ALLSTAGE_VAL_ITERATIONS_PER_EPOCH": "1",
        "NNUNET_ALLSTAGE_CLIP_PRETRAINED": "random-test-only", "nnUNet_compile": "f", "nnUNet_def_n_proc": "2",
        "nnUNet_n_proc_DA": "0"}
CLI = str(Path(sys.executable).parent / "nnunet-allstage")
STAGES = ("AllStageMAETrainer_1epoch", "AllStageHyperTrainer_1epoch", "AllStageMAEDATrainer_1epoch",
          "AllStageTrainer_1epoch")


def run(env: dict, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([CLI, *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"nnunet-allstage {' '.join(args)} failed:\n{result.stdout[-3000:]}\n" \
                                   f"{result.stderr[-3000:]}"
    return result


@pytest.fixture
def converted(tmp_path, synthetic_src):
    """A converted synthetic dataset with its own nnU-Net folders; returns (environment, dataset id, raw folder)."""
    from nnunet_allstage.environment import trainer_shim_dir
    env = {**os.environ, **FAST, "nnUNet_extTrainer": str(trainer_shim_dir()), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(tmp_path / name)
    run(env, "convert-brats", "--src", str(synthetic_src), "-d", "970", "--fm-ratio", "0.25", "--seed", "0")
    return env, 970, next((tmp_path / "nnUNet_raw").glob("Dataset970_*"))


def predict_case_missing_two(env: dict, raw: Path, tmp: Path, configuration: str, plans: str) -> tuple[Path, Path]:
    """`nnunet-allstage predict` on a test case whose T1 and T2 files are absent."""
    case = sorted(p.name[:-12] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    inp, out = tmp / f"in_{configuration}", tmp / f"out_{configuration}"
    inp.mkdir()
    for channel in (0, 2):  # FLAIR and T1c only
        shutil.copy(raw / "imagesTs" / f"{case}_{channel:04d}.nii.gz", inp)
    run(env, "predict", "-i", str(inp), "-o", str(out), "-d", "970", "-f", "0", "-c", configuration, "-p", plans,
        "-tr", STAGES[-1], "-device", "cpu", "--disable_tta")
    return raw / "labelsTs" / f"{case}.nii.gz", out / f"{case}.nii.gz"


def assert_trained_and_predicted(env: dict, raw: Path, tmp: Path, configuration: str, plans: str) -> dict:
    results = Path(env["nnUNet_results"]) / raw.name
    for trainer in STAGES:
        assert (results / f"{trainer}__{plans}__{configuration}" / "fold_0" / "checkpoint_final.pth").is_file()
    stage4 = torch.load(results / f"AllStageTrainer_1epoch__{plans}__{configuration}" / "fold_0" /
                        "checkpoint_final.pth", map_location="cpu", weights_only=False)
    reference, prediction = predict_case_missing_two(env, raw, tmp, configuration, plans)
    ref, pred = sitk.ReadImage(str(reference)), sitk.ReadImage(str(prediction))
    assert ref.GetSize() == pred.GetSize() and np.allclose(ref.GetSpacing(), pred.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}
    record = json.loads((prediction.parent / "predictions.json").read_text())
    assert record["cases"][prediction.name[:-7]]["sequences"] == ["FLAIR", "T1c"]
    return stage4


def test_2d_configuration_end_to_end(converted, tmp_path):
    env, dataset_id, raw = converted
    run(env, "plan", "-d", str(dataset_id), "-c", "2d")
    run(env, "train", "-d", str(dataset_id), "-f", "0", "-c", "2d", "--schedule", "1epoch", "-device", "cpu",
        "--no-validate")
    stage4 = assert_trained_and_predicted(env, raw, tmp_path, "2d", "nnUNetPlans")
    # the hyper head follows the planned convolutions: its feature projection is a Conv2d weight (out, in, 1, 1)
    projection = [v for k, v in stage4["network_weights"].items() if k.endswith("feature_proj.2.weight")]
    assert len(projection) == 1 and projection[0].ndim == 4


def test_residual_encoder_plans_end_to_end(converted, tmp_path):
    env, dataset_id, raw = converted
    run(env, "plan", "-d", str(dataset_id), "-pl", "nnUNetPlannerResEncM", "--target-spacing", "2", "2", "2")
    plans = "nnUNetResEncUNetMPlans_2mm"
    run(env, "train", "-d", str(dataset_id), "-f", "0", "-p", plans, "--schedule", "1epoch", "-device", "cpu",
        "--no-validate")
    stage4 = assert_trained_and_predicted(env, raw, tmp_path, "3d_fullres", plans)
    # the residual encoder's blocks are in the student's weights (ResidualEncoderUNet, not PlainConvUNet)
    assert any(".blocks." in k and k.startswith("encoder.stages") for k in stage4["network_weights"])
    assert any(".blocks." in k for k in stage4["allstage"].get("recovery_weights", {}))
