"""The stages end to end on a small synthetic dataset, through nnU-Net's own command-line entry points."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytestmark = pytest.mark.slow

DATASET_ID = 960
SHAPE = (40, 44, 36)
FAST = {"NNUNET_ALLSTAGE_ITERATIONS_PER_EPOCH": "2", "NNUNET_ALLSTAGE_VAL_ITERATIONS_PER_EPOCH": "1",
        "NNUNET_ALLSTAGE_CLIP_PRETRAINED": "random-test-only", "nnUNet_compile": "f", "nnUNet_def_n_proc": "2"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from nnunet_allstage.conversion import convert_brats
    from nnunet_allstage.environment import trainer_shim_dir
    from nnunet_allstage.planning import plan_dataset
    from nnunet_allstage.synthetic import write_synthetic_brats
    root = tmp_path_factory.mktemp("stages")
    env = {**os.environ, **FAST, "nnUNet_extTrainer": str(trainer_shim_dir()), "XDG_CACHE_HOME": str(root / "cache")}
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[name] = str(root / name)
    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    src = write_synthetic_brats(root / "src", num_cases=8, seed=1, shape=SHAPE)
    convert_brats(src, dataset_id=DATASET_ID, fm_ratio=0.25, seed=0, num_processes=2)
    plan_dataset(DATASET_ID, num_processes=2)
    yield {"root": root, "env": env}
    mp.undo()


def train(ws, trainer: str, *extra: str, env_extra: dict | None = None, check=True):
    cmd = [str(Path(sys.executable).parent / "nnUNetv2_train"), str(DATASET_ID), "3d_fullres", "0", "-tr", trainer,
           "-device", "cpu", *extra]
    env = {**ws["env"], "nnUNet_n_proc_DA": "0", **(env_extra or {})}
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{trainer} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def output_folder(ws, trainer: str) -> Path:
    return next((ws["root"] / "nnUNet_results").glob(f"Dataset{DATASET_ID}_*")) / \
        f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"


def raw_folder(ws) -> Path:
    return next((ws["root"] / "nnUNet_raw").glob(f"Dataset{DATASET_ID}_*"))


def predict_without_clip(ws, trainer: str, zero_channels=(1, 3)) -> tuple[Path, Path]:
    """Stock nnUNetv2_predict on a test case with two modalities zeroed, with open_clip made unimportable."""
    raw = raw_folder(ws)
    case = sorted(p.name[:-12] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))[0]
    inp = ws["root"] / f"pred_in_{trainer}"
    out = ws["root"] / f"pred_out_{trainer}"
    inp.mkdir(exist_ok=True)
    for ch in range(4):
        img = sitk.ReadImage(str(raw / "imagesTs" / f"{case}_{ch:04d}.nii.gz"))
        sitk.WriteImage(img * 0 if ch in zero_channels else img, str(inp / f"{case}_{ch:04d}.nii.gz"))
    blocker = ws["root"] / "no_clip" / "open_clip"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text("raise ImportError('CLIP must not be needed at inference')\n")
    env = {**ws["env"], "PYTHONPATH": str(blocker.parent)}
    cmd = [str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d",
           str(DATASET_ID), "-c", "3d_fullres", "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
           "--disable_tta"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return raw / "labelsTs" / f"{case}.nii.gz", out / f"{case}.nii.gz"


def assert_valid_segmentation(reference: Path, prediction: Path):
    ref, pred = sitk.ReadImage(str(reference)), sitk.ReadImage(str(prediction))
    assert ref.GetSize() == pred.GetSize() and np.allclose(ref.GetSpacing(), pred.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}


def test_stage1_mae(workspace):
    train(workspace, "AllStageMAETrainer_1epoch")
    folder = output_folder(workspace, "AllStageMAETrainer_1epoch")
    ckpt = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    logging = ckpt["logging"]
    assert len(logging["val_mse_per_modality"]) == 1 and len(logging["val_mse_per_modality"][0]) == 4
    assert len(logging["val_psnr_per_modality"][0]) == 4
    assert 0 < logging["mean_fg_dice"][0] <= 1
    assert (folder / "progress.png").is_file() and (folder / "checkpoint_best.pth").is_file()
    previews = list(folder.glob("reconstruction_preview_*.png"))
    assert previews and previews[0].stat().st_size > 10000
    out_channels = ckpt["network_weights"]["decoder.seg_layers.0.weight"].shape[0]
    assert out_channels == 4  # M-channel reconstruction head


def test_stage1_resume_with_c(workspace):
    env = {"NNUNET_ALLSTAGE_NUM_EPOCHS": "2"}
    train(workspace, "AllStageMAETrainer_5epochs", env_extra={"NNUNET_ALLSTAGE_NUM_EPOCHS": "1"})
    folder = output_folder(workspace, "AllStageMAETrainer_5epochs")
    (folder / "checkpoint_final.pth").rename(folder / "checkpoint_latest.pth")
    result = train(workspace, "AllStageMAETrainer_5epochs", "--c", env_extra=env)
    ckpt = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2 and len(ckpt["logging"]["train_losses"]) == 2
    assert "Epoch 1" in result.stdout and "Epoch 0\n" not in result.stdout


def test_stage2_hyper_and_stock_prediction(workspace):
    result = train(workspace, "AllStageHyperTrainer_1epoch")
    folder = output_folder(workspace, "AllStageHyperTrainer_1epoch")
    log = next(folder.glob("training_log_*.txt")).read_text()
    assert "initialised from stage 1" in log and "tensors loaded" in log
    assert "RANDOM-WEIGHT CLIP" in log
    assert (folder / "validation" / "summary.json").is_file()  # nnU-Net's final validation ran
    ckpt = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    table = ckpt["network_weights"]["code_table"]
    assert table.shape == (15, 512) and table.abs().sum() > 0
    assert "RANDOM" in ckpt["allstage"]["code_table"]
    reference, prediction = predict_without_clip(workspace, "AllStageHyperTrainer_1epoch")
    assert_valid_segmentation(reference, prediction)


def test_missing_stage1_is_a_clear_error(workspace):
    result = train(workspace, "AllStageHyperTrainer_50epochs", check=False)
    assert result.returncode != 0
    assert "stage 1 checkpoint not found" in result.stderr + result.stdout
    assert "-tr AllStageMAETrainer_50epochs" in result.stderr + result.stdout


def test_dropout_baseline(workspace):
    train(workspace, "AllStageDropoutTrainer_1epoch")
    reference, prediction = predict_without_clip(workspace, "AllStageDropoutTrainer_1epoch")
    assert_valid_segmentation(reference, prediction)
