"""The stages end to end on the shared synthetic dataset, through nnU-Net's own command-line entry points, and the
user's workflow (predict, evaluate, validate, synthesize) on the models the session trained once (`trained`)."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN, DATASET_ID

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def predict_without_clip(trained):
    """Stock nnUNetv2_predict on a test case with two modalities zeroed, with open_clip made unimportable: a function
    of the trainer (and the zeroed channels) that predicts once per model and input in this module. Sequential
    (`-npp 0 -nps 0`): nnU-Net's worker processes cost seconds of imports each, and the GPU check's test predicts
    through them with our model."""
    done = {}

    def predict(trainer: str, zero_channels=(1, 3)) -> tuple[Path, Path]:
        key = (trainer, tuple(zero_channels))
        if key not in done:
            done[key] = _predict_without_clip(trained, trainer, key[1])
        return done[key]
    return predict


def _predict_without_clip(ws, trainer: str, zero_channels) -> tuple[Path, Path]:
    raw, case = ws.raw, ws.test_case()
    zeroed = ''.join(map(str, zero_channels))
    inp, out = ws.root / f"pred_in_{trainer}_{zeroed}", ws.root / f"pred_out_{trainer}_{zeroed}"
    shutil.rmtree(out, ignore_errors=True)
    inp.mkdir(exist_ok=True)
    for ch in range(4):
        img = sitk.ReadImage(str(raw / "imagesTs" / f"{case}_{ch:04d}.nii.gz"))
        sitk.WriteImage(img * 0 if ch in zero_channels else img, str(inp / f"{case}_{ch:04d}.nii.gz"))
    blocker = ws.root / "no_clip" / "open_clip"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text("raise ImportError('CLIP must not be needed at inference')\n")
    cmd = [str(BIN / "nnUNetv2_predict"), "-i", str(inp), "-o", str(out), "-d", str(DATASET_ID), "-c", "3d_fullres",
           "-tr", trainer, "-f", "0", "-device", "cpu", "-npp", "0", "-nps", "0", "--disable_tta"]
    result = subprocess.run(cmd, env={**ws.env, "PYTHONPATH": str(blocker.parent)}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return raw / "labelsTs" / f"{case}.nii.gz", out / f"{case}.nii.gz"


def assert_valid_segmentation(reference: Path, prediction: Path):
    ref, pred = sitk.ReadImage(str(reference)), sitk.ReadImage(str(prediction))
    assert ref.GetSize() == pred.GetSize() and np.allclose(ref.GetSpacing(), pred.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(pred))) <= {0, 1, 2, 3}


def checkpoint(ws, trainer: str, name: str = "checkpoint_final.pth") -> dict:
    return torch.load(ws.output_folder(trainer) / name, map_location="cpu", weights_only=False)


# ---------------------------------------------------------------- each stage
def test_stage1_mae(trained):
    folder = trained.output_folder("AllStageMAETrainer_1epoch")
    ckpt = checkpoint(trained, "AllStageMAETrainer_1epoch")
    logging = ckpt["logging"]
    assert len(logging["val_mse_per_modality"]) == 1 and len(logging["val_mse_per_modality"][0]) == 4
    assert len(logging["val_psnr_per_modality"][0]) == 4
    assert ckpt["allstage"]["stage"].startswith("stage 1") and ckpt["allstage"]["options"]["mask_ratio"] == 0.875
    assert (folder / "progress.png").is_file() and (folder / "checkpoint_best.pth").is_file()
    previews = list(folder.glob("reconstruction_preview_*.png"))
    assert previews and previews[0].stat().st_size > 10000
    out_channels = ckpt["network_weights"]["decoder.seg_layers.0.weight"].shape[0]
    assert out_channels == 4  # M-channel reconstruction head


def test_stage1_resume_with_c(trained):
    """An interrupted stage 1 (its one-epoch checkpoint as checkpoint_latest of a longer run) continues with --c;
    other options are refused."""
    folder = trained.output_folder("AllStageMAETrainer_5epochs")
    shutil.copytree(trained.output_folder("AllStageMAETrainer_1epoch"), folder)
    (folder / "checkpoint_final.pth").rename(folder / "checkpoint_latest.pth")
    env = {"NNUNET_ALLSTAGE_NUM_EPOCHS": "2"}
    refused = trained.train("AllStageMAETrainer_5epochs", "--c", env_extra={**env, "NNUNET_ALLSTAGE_MASK_RATIO": "0.5"},
                            check=False)
    assert refused.returncode != 0
    assert "trained with other options (mask_ratio: 0.875 -> 0.5)" in refused.stdout + refused.stderr
    result = trained.train("AllStageMAETrainer_5epochs", "--c", env_extra=env)
    ckpt = checkpoint(trained, "AllStageMAETrainer_5epochs")
    assert ckpt["current_epoch"] == 2 and len(ckpt["logging"]["train_losses"]) == 2
    assert "Epoch 1" in result.stdout and "Epoch 0\n" not in result.stdout


def test_stage2_hyper_and_stock_prediction(trained, predict_without_clip):
    folder = trained.output_folder("AllStageHyperTrainer_1epoch")
    log = next(folder.glob("training_log_*.txt")).read_text()
    assert "initialised from stage 1" in log and "tensors loaded" in log
    assert "RANDOM-WEIGHT CLIP" in log
    assert (folder / "validation" / "summary.json").is_file()  # nnU-Net's final validation ran
    ckpt = checkpoint(trained, "AllStageHyperTrainer_1epoch")
    table = ckpt["network_weights"]["code_table"]
    assert table.shape == (15, 512) and table.abs().sum() > 0
    assert "RANDOM" in ckpt["allstage"]["code_table"]
    reference, prediction = predict_without_clip("AllStageHyperTrainer_1epoch")
    assert_valid_segmentation(reference, prediction)


def test_predecessor_trained_with_other_options_is_refused(trained):
    stage1 = trained.output_folder("AllStageMAETrainer_1epoch") / "checkpoint_final.pth"
    result = trained.train("AllStageHyperTrainer_5epochs", env_extra={"NNUNET_ALLSTAGE_MASK_RATIO": "0.5",
                                                                     "NNUNET_ALLSTAGE_STAGE1_CHECKPOINT": str(stage1)},
                           check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "stage 1 (" in out and "mask_ratio: 0.875 -> 0.5" in out
    assert not (trained.output_folder("AllStageHyperTrainer_5epochs") / "checkpoint_final.pth").exists()


def test_missing_stage1_is_a_clear_error(workspace, tmp_path):
    result = workspace.train("AllStageHyperTrainer_5epochs", env_extra={"nnUNet_results": str(tmp_path)},
                             check=False)
    assert result.returncode != 0
    assert "stage 1 checkpoint not found" in result.stderr + result.stdout
    assert "-tr AllStageMAETrainer_5epochs" in result.stderr + result.stdout


def test_dropout_baseline(trained, predict_without_clip):
    folder = trained.output_folder("AllStageDropoutTrainer_1epoch")
    assert "final validation skipped" in next(folder.glob("training_log_*.txt")).read_text()
    assert not (folder / "validation").exists()
    reference, prediction = predict_without_clip("AllStageDropoutTrainer_1epoch")
    assert_valid_segmentation(reference, prediction)


def test_stage3_stage4_and_stock_prediction(trained, predict_without_clip):
    ckpt3 = checkpoint(trained, "AllStageMAEDATrainer_1epoch")
    assert len(ckpt3["logging"]["train_rec_loss"]) == 1 and len(ckpt3["logging"]["train_seg_loss"]) == 1
    assert list(trained.output_folder("AllStageMAEDATrainer_1epoch").glob("reconstruction_preview_*.png"))
    ckpt4 = checkpoint(trained, "AllStageTrainer_1epoch")
    assert all(len(ckpt4["logging"][f"train_{k}_loss"]) == 1 for k in ("task", "data", "kd"))
    assert "recovery_weights" in ckpt4["allstage"]
    assert not any(k.startswith(("teacher", "recovery")) for k in ckpt4["network_weights"])  # the student alone
    assert ckpt4["allstage"]["stage"].startswith("stage 4") and "RANDOM" in ckpt4["allstage"]["code_table"]
    assert ckpt4["allstage"]["options"]["student_init"] == "stage3"
    reference, prediction = predict_without_clip("AllStageTrainer_1epoch")
    assert_valid_segmentation(reference, prediction)


def _trainer(name: str):
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(str(DATASET_ID), "3d_fullres", 0, name, "nnUNetPlans", device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def _batch_with_a_missing_modality(trainer):
    """A training batch whose first case lacks a modality (its key and its data say so)."""
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    batch = next(trainer.dataloader_train)
    partial = next(k for k, v in sorted(trainer._availability_record["cases"].items()) if not all(v))
    batch["keys"] = [partial] + list(batch["keys"][1:])
    return batch


def test_stage4_gradients_teacher_frozen_and_resume(trained, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    from nnunet_allstage.masking import fill_missing, zero_missing
    t = _trainer("AllStageTrainer_1epoch")
    t.load_predecessors()
    batch = _batch_with_a_missing_modality(t)
    # L_data alone: gradients reach the recovering module, never the teacher
    available = t.batch_availability(batch["keys"])
    assert bool((available == 0).any())
    x = zero_missing(batch["data"], available)
    out = t.teacher(fill_missing(x, available, t.recovery(x)), torch.ones_like(available))
    t.loss(out, batch["target"]).backward()
    assert all(p.grad is None for p in t.teacher.parameters())
    assert sum(p.grad.abs().sum() for p in t.recovery.parameters() if p.grad is not None) > 0
    t.optimizer.zero_grad(set_to_none=True)
    teacher_before = {k: v.clone() for k, v in t.teacher.state_dict().items()}
    recovery_before = {k: v.clone() for k, v in t.recovery.state_dict().items()}
    for _ in range(2):
        t.train_step(next(t.dataloader_train))
    assert all(torch.equal(v, t.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, t.recovery.state_dict()[k]) for k, v in recovery_before.items())
    # an interrupted run: checkpoint mid-training, then a new trainer resumes everything
    path = trained.root / "stage4_mid.pth"
    t.save_checkpoint(str(path))
    resumed = _trainer("AllStageTrainer_1epoch")
    resumed.load_checkpoint(str(path))
    for mine, theirs in ((t.network, resumed.network), (t.recovery, resumed.recovery), (t.teacher, resumed.teacher)):
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in mine.state_dict().items())
    opt_a, opt_b = t.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert len(opt_a["state"]) == len(opt_b["state"]) > 0
    # every buffer of the optimiser (SGD's momentum, Adam's moments and step), whichever is configured
    assert all(torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b["state"][i][name]))
               for i in opt_a["state"] for name, value in opt_a["state"][i].items())
    assert resumed.was_resumed


# nnUNetv2_train with the stage-4 step wrapped so that the process kills itself at a chosen iteration
KILL_AT_ITERATION = """
import os, signal, sys
from nnunet_allstage.training.codistillation import AllStageTrainer
step = AllStageTrainer.train_step
def train_step(self, batch):
    if self.current_epoch == {epoch} and getattr(self, "iteration_in_epoch", 0) == {iteration}:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, batch)
AllStageTrainer.train_step = train_step
from nnunetv2.run.run_training import run_training_entry
sys.argv = ["nnUNetv2_train", *{args!r}]
run_training_entry()
"""


def test_stage4_killed_mid_epoch_continues_with_c(trained):
    """Killed at the second iteration of epoch 1 (after checkpoint_latest of epoch 0), then `--c` finishes."""
    name = "AllStageTrainer_5epochs"
    env = {**trained.env, "nnUNet_n_proc_DA": "0", "NNUNET_ALLSTAGE_NUM_EPOCHS": "2", "NNUNET_ALLSTAGE_SAVE_EVERY": "1",
           "NNUNET_ALLSTAGE_STAGE2_CHECKPOINT": str(trained.output_folder("AllStageHyperTrainer_1epoch") /
                                                     "checkpoint_final.pth"),
           "NNUNET_ALLSTAGE_STAGE3_CHECKPOINT": str(trained.output_folder("AllStageMAEDATrainer_1epoch") /
                                                     "checkpoint_final.pth")}
    args = [str(DATASET_ID), "3d_fullres", "0", "-tr", name, "-device", "cpu"]
    killed = subprocess.run([sys.executable, "-c", KILL_AT_ITERATION.format(epoch=1, iteration=1, args=args)],
                            env=env, capture_output=True, text=True)
    folder = trained.output_folder(name)
    assert killed.returncode == -9, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert "Epoch 1" in killed.stdout and "Epoch 0" in killed.stdout
    assert (folder / "checkpoint_latest.pth").is_file() and not (folder / "checkpoint_final.pth").is_file()
    assert torch.load(folder / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["current_epoch"] == 1
    result = subprocess.run([str(BIN / "nnUNetv2_train"), *args, "--c"], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "note: taking over" in result.stdout  # the killed run's lock, its process gone
    ckpt = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["current_epoch"] == 2 and "recovery_weights" in ckpt["allstage"]


# ---------------------------------------------------------------- the user's workflow on the trained models
def _model(ws, trainer, folder: Path | None = None):
    from nnunet_allstage.inference import load_model
    return load_model(folder or ws.output_folder(trainer).parent, 0, "checkpoint_final.pth", torch.device("cpu"),
                      False, trainer)


def test_in_memory_zeroing_equals_zero_filled_files(trained, predict_without_clip):
    """evaluate's in-memory channel zeroing gives the segmentation stock nnUNetv2_predict gives on files."""
    from nnunet_allstage.inference import predict_combination, preprocess_case
    trainer = "AllStageTrainer_1epoch"
    model = _model(trained, trainer)
    case = trained.test_case()
    files = [trained.raw / "imagesTs" / f"{case}_{c:04d}.nii.gz" for c in range(4)]
    data, props = preprocess_case(model.predictor, files)
    reference, stock = predict_without_clip(trainer, zero_channels=(1, 3))  # code (1, 0, 1, 0)
    ours = predict_combination(model, data, props, (1, 0, 1, 0))
    theirs = sitk.GetArrayFromImage(sitk.ReadImage(str(stock)))
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_predict_with_missing_files_equals_zero_files(trained, tmp_path):
    from nnunet_allstage.prediction import predict_folder
    model = _model(trained, "AllStageTrainer_1epoch")
    raw = trained.raw
    cases = sorted(p.name[:-12] for p in (raw / "imagesTs").glob("*_0000.nii.gz"))
    with_zero, without = tmp_path / "zero", tmp_path / "missing"
    brats = tmp_path / "brats"
    for folder in (with_zero, without):
        folder.mkdir()
    for case in cases:
        (brats / case).mkdir(parents=True)
        for ch, suffix in enumerate(("flair", "t1", "t1ce", "t2")):
            img = sitk.ReadImage(str(raw / "imagesTs" / f"{case}_{ch:04d}.nii.gz"))
            if ch == 2:  # T1c missing
                sitk.WriteImage(img * 0, str(with_zero / f"{case}_{ch:04d}.nii.gz"))
                continue
            sitk.WriteImage(img, str(with_zero / f"{case}_{ch:04d}.nii.gz"))
            sitk.WriteImage(img, str(without / f"{case}_{ch:04d}.nii.gz"))
            sitk.WriteImage(img, str(brats / case / f"{case}_{suffix}.nii.gz"))
    (brats / "BraTS20_Training_999").mkdir()  # a case with no modality: reported, the others still predicted
    (brats / "BraTS20_Training_999" / "BraTS20_Training_999_seg.nii.gz").write_bytes(
        (raw / "labelsTs" / f"{cases[0]}.nii.gz").read_bytes())
    logs = []
    predict_folder(model, with_zero, tmp_path / "out_zero", log=logs.append)
    predict_folder(model, without, tmp_path / "out_missing", log=logs.append)
    status = predict_folder(model, brats, tmp_path / "out_brats", brats_labels_year="2020", log=logs.append)
    assert status["BraTS20_Training_999"] != "ok" and all(status[c] == "ok" for c in cases)
    assert any("predicted from FLAIR+T1+T2" in line for line in logs)
    for case in cases:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out_zero" / f"{case}.nii.gz")))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out_missing" / f"{case}.nii.gz")))
        c = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out_brats" / f"{case}.nii.gz")))
        assert np.array_equal(a, b)
        lut = np.array([0, 2, 1, 4])  # nnU-Net labels -> BraTS 2020 labels
        assert np.array_equal(lut[a], c)


def test_predict_lists_truncated_and_nan_cases_and_predicts_the_others(trained, tmp_path):
    from nnunet_allstage.prediction import predict_folder
    from test_conversion import add_nan, truncate
    raw, case = trained.raw, trained.test_case()
    inp = tmp_path / "in"
    inp.mkdir()
    for name in ("good", "cut", "nan"):
        for ch in range(4):
            (inp / f"{name}_{ch:04d}.nii.gz").write_bytes((raw / "imagesTs" / f"{case}_{ch:04d}.nii.gz").read_bytes())
    truncate(inp / "cut_0001.nii.gz")
    add_nan(inp / "nan_0000.nii.gz")
    logs = []
    status = predict_folder(_model(trained, "AllStageTrainer_1epoch"), inp, tmp_path / "out", log=logs.append)
    assert status["good"] == "ok" and (tmp_path / "out" / "good.nii.gz").is_file()
    assert "truncated" in status["cut"] and "cut_0001.nii.gz" in status["cut"]
    assert "NaN" in status["nan"] and "nan_0000.nii.gz" in status["nan"]
    assert not (tmp_path / "out" / "cut.nii.gz").exists() and not (tmp_path / "out" / "nan.nii.gz").exists()
    assert "failed: cut, nan" in logs[-1]
    record = json.loads((tmp_path / "out" / "nnunet_allstage_model.json").read_text())
    assert record["stage"].startswith("stage 4") and "RANDOM-WEIGHT CLIP" in record["warning"]
    assert any("RANDOM-WEIGHT CLIP" in line for line in logs)


def test_synthesize_fills_missing_sequences_marks_them_and_evaluates_them(trained, tmp_path):
    """`synthesize` with the stage-4 model's g: files on the case's grid, in the training data's scale inside the
    brain and 0 outside, marked synthetic (and so listed by predict); --evaluate compares each with the real one."""
    from nnunet_allstage.errors import AllStageError
    from nnunet_allstage.image_io import geometry, same_grid
    from nnunet_allstage.prediction import predict_folder
    from nnunet_allstage.synthesis import evaluate_synthesis, load_synthesizer, synthesize_folder
    trainer = "AllStageTrainer_1epoch"
    synth = load_synthesizer(trained.output_folder(trainer).parent, 0, "checkpoint_final.pth", torch.device("cpu"))
    assert set(synth.reference) == {"FLAIR", "T1", "T1c", "T2"}  # the training data's scale, from nnUNet_raw
    raw, case = trained.raw, trained.test_case()
    inp = tmp_path / "in"
    inp.mkdir()
    for channel in (0, 3):  # FLAIR and T2 only
        shutil.copy(raw / "imagesTs" / f"{case}_{channel:04d}.nii.gz", inp)
    out = tmp_path / "out"
    record = synthesize_folder(synth, inp, out, with_inputs=True, log=lambda *_: None)
    assert record["cases"][case] == {"real": ["FLAIR", "T2"],
                                     "synthetic": {"T1": f"{case}_0001.nii.gz", "T1c": f"{case}_0002.nii.gz"}}
    real = sitk.ReadImage(str(inp / f"{case}_0000.nii.gz"))
    brain = (sitk.GetArrayFromImage(real) != 0) | (sitk.GetArrayFromImage(sitk.ReadImage(
        str(inp / f"{case}_0003.nii.gz"))) != 0)
    for channel, name in ((1, "T1"), (2, "T1c")):
        image = sitk.ReadImage(str(out / f"{case}_{channel:04d}.nii.gz"))
        assert same_grid(geometry(real), geometry(image)) is None
        values = sitk.GetArrayFromImage(image)
        assert np.isfinite(values).all() and not values[~brain].any() and values[brain].std() > 0
        ref = synth.reference[name]  # z-scores mapped to the training scale: a 1-epoch g stays near its mean
        assert abs(values[brain].mean() - ref["mean"]) < 5 * ref["std"]
    assert sorted(p.name for p in out.glob(f"{case}_*.nii.gz")) == [f"{case}_{c:04d}.nii.gz" for c in range(4)]
    predict_folder(_model(trained, trainer), out, tmp_path / "pred", log=lambda *_: None)
    entry = json.loads((tmp_path / "pred" / "predictions.json").read_text())["cases"][case]
    assert entry["synthetic_sequences"] == ["T1", "T1c"] and "synthetic" in entry["warning"]

    with pytest.raises(AllStageError, match="no recovering module"):
        load_synthesizer(trained.output_folder("AllStageHyperTrainer_1epoch").parent, 0, "checkpoint_final.pth",
                         torch.device("cpu"))
    complete = tmp_path / "complete"
    complete.mkdir()
    for channel in range(4):
        shutil.copy(raw / "imagesTs" / f"{case}_{channel:04d}.nii.gz", complete)
    result = evaluate_synthesis(synth, complete, tmp_path / "eval", log=lambda *_: None)
    # every (combination lacking something, missing sequence) pair: 4*3 + 6*2 + 4*1
    assert len(result["rows"]) == 28
    assert all(np.isfinite(r["psnr"]) and -1 <= r["ssim"] <= 1 for r in result["rows"])
    for name in ("synthesis_metrics.csv", "synthesis_table.md", "synthesis_examples.png"):
        assert (tmp_path / "eval" / name).is_file()


def test_teacher_probe_is_the_stage4_teacher_in_each_situation(trained):
    """probe_models: the stage-2 model as deployed, and the same frozen model in full-modality mode on zeros and on
    g's fill-ins, recomputed here from the checkpoints; with every sequence present the three are one model."""
    import pandas as pd
    from nnunet_allstage.errors import AllStageError
    from nnunet_allstage.evaluation import evaluate
    from nnunet_allstage.masking import fill_missing
    from nnunet_allstage.networks import build_mae_network, network_code
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "studies"))
    from teacher_probe import probe_models, probe_summary
    trainer = "AllStageTrainer_1epoch"
    deployed, on_zeros, on_fill = probe_models(trained.output_folder(trainer).parent, 0, torch.device("cpu"))
    assert deployed.folder.name.startswith("AllStageHyperTrainer_1epoch__")
    p = deployed.predictor
    g = build_mae_network(p.plans_manager, p.configuration_manager, 4).eval()
    g.load_state_dict(checkpoint(trained, trainer)["allstage"]["recovery_weights"])
    teacher = p.network.eval()
    x = torch.randn(1, 4, *p.configuration_manager.patch_size)
    ones = torch.ones(1, 4)
    for code in ([1.0, 0.0, 1.0, 0.0], [1.0] * 4):
        code = torch.tensor([code])
        xz = x * code.view(1, 4, 1, 1, 1)
        with torch.no_grad():
            with network_code(on_zeros.predictor.network, code):
                zeros_out = on_zeros.predictor.network(xz)
            with network_code(on_fill.predictor.network, code):
                fill_out = on_fill.predictor.network(xz)
            assert torch.allclose(zeros_out, teacher(xz, ones), atol=1e-5)
            assert torch.allclose(fill_out, teacher(fill_missing(xz, code, g(xz)), ones), atol=1e-5)
            assert torch.allclose(fill_out, zeros_out, atol=1e-5) == bool(code.all())
    # through nnU-Net's predictor in evaluate: with every sequence the three give one segmentation
    raw, case = trained.raw, trained.test_case()
    files = [raw / "imagesTs" / f"{case}_{c:04d}.nii.gz" for c in range(4)]
    out = trained.root / "probe"
    evaluate([deployed, on_zeros, on_fill], [(case, files, raw / "labelsTs" / f"{case}.nii.gz")],
             [(1, 0, 1, 0), (1, 1, 1, 1)], out)
    rows = probe_summary(pd.read_csv(out / "results.csv"), deployed.name)
    assert [r["model"] for r in rows] == [deployed.name, on_zeros.name, on_fill.name]
    assert rows[0]["complete"] == rows[1]["complete"] == rows[2]["complete"]
    assert rows[2]["delta"] == pytest.approx(rows[2]["incomplete"] - rows[0]["incomplete"]) and rows[2]["cases"] == 1
    with pytest.raises(AllStageError, match="no recovering module or no hyper-teacher"):
        probe_models(trained.output_folder("AllStageHyperTrainer_1epoch").parent, 0, torch.device("cpu"))


def test_evaluate_table_has_the_papers_shape(trained):
    from nnunet_allstage.cli import main
    trainers = ["AllStageTrainer_1epoch", "AllStageDropoutTrainer_1epoch"]
    out = trained.root / "evaluation"
    assert main(["evaluate", "-d", str(DATASET_ID), "-f", "0", "-tr", *trainers, "-device", "cpu",
                 "--disable_tta", "-o", str(out), "--metrics", "both"]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    n_cases = len(list((trained.raw / "imagesTs").glob("*_0000.nii.gz")))
    assert len(rows) == n_cases * 15 * 3 * 2
    assert {r["region"] for r in rows} == {"WT", "TC", "ET"}
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["combinations"]) == 15 and summary["markers"][-1] == "●●●●"
    for model in trainers:
        for region in ("WT", "TC", "ET"):
            entry = summary["models"][model][region]
            mine = [r for r in rows if r["model"] == model and r["region"] == region]
            # the table's mean over combinations is the mean of every case and combination of the CSV (each
            # combination has every case), and its first column the cases of the first combination
            assert len(entry["dice"]) == 15 and entry["mean_dice"] == pytest.approx(
                sum(float(r["dice"]) for r in mine) / len(mine))
            first = [float(r["dice"]) for r in mine if r["combination"] == summary["combinations"][0]]
            assert len(first) == n_cases and entry["dice"][0] == pytest.approx(sum(first) / n_cases)
    assert len(summary["warnings"]) == 1 and "AllStageTrainer_1epoch uses RANDOM-WEIGHT CLIP" in summary["warnings"][0]
    assert summary["provenance"]["AllStageDropoutTrainer_1epoch"]["code_table"] is None
    table = (out / "table.md").read_text()
    assert summary["warnings"][0] in table
    header = next(line for line in table.splitlines() if line.startswith("| Region"))
    assert header.count("|") == 2 + 15 + 1 + 1
    # 2 models x (Dice, HD95, and the BraTS package's lesion-wise Dice, HD95 and detection F1)
    assert sum(line.startswith("| WT |") for line in table.splitlines()) == 10
    assert "Lesion-wise Dice" in table and {"lesion_dice", "lesion_hd95", "lesion_f1"} <= set(rows[0])
    assert summary["metrics"] == ["dice", "hd95", "lesion_dice", "lesion_hd95", "lesion_f1"]
    assert (out / "dice_heatmap.png").stat().st_size > 5000 and (out / "hd95_heatmap.png").is_file()
    assert (out / "lesion_dice_heatmap.png").is_file() and (out / "lesion_f1_heatmap.png").is_file()


def _validated(ws) -> dict:
    """expected_accuracy.json of the stage-4 model, measured once by `validate`."""
    from nnunet_allstage.cli import main
    path = ws.output_folder("AllStageTrainer_1epoch") / "expected_accuracy.json"
    if not path.is_file():
        assert main(["validate", "-d", str(DATASET_ID), "-f", "0", "-tr", "AllStageTrainer_1epoch", "-device", "cpu",
                     "--disable_tta"]) == 0
    return json.loads(path.read_text())


def _predict_one(ws, model, channels, out: Path) -> dict:
    from nnunet_allstage.prediction import predict_folder
    case = ws.test_case()
    inp = out.parent / f"{out.name}_in"
    inp.mkdir()
    for ch in channels:
        (inp / f"{case}_{ch:04d}.nii.gz").write_bytes((ws.raw / "imagesTs" / f"{case}_{ch:04d}.nii.gz").read_bytes())
    logs = []
    predict_folder(model, inp, out, log=logs.append)
    assert (out / f"{case}.nii.gz").is_file()
    return {**json.loads((out / "predictions.json").read_text())["cases"][case], "logs": logs}


def test_validate_then_predict_quotes_expected_accuracy(trained, tmp_path):
    from nnunet_allstage.modalities import read_availability
    record = _validated(trained)
    splits = json.loads((trained.preprocessed / "splits_final.json").read_text())
    assert record["validation_cases"] == splits[0]["val"]
    availability = read_availability(trained.raw)["cases"]
    for entry in record["combinations"].values():  # a case counts only for combinations its sequences allow
        allowed = [c for c in record["validation_cases"]
                   if all(a >= b for a, b in zip(availability[c], entry["code"]))]
        assert entry["n_validation_cases"] == len(allowed)
        assert set(entry.get("dice", {})) == ({"WT", "TC", "ET"} if allowed else set())
    # the one validation case has every sequence (FM ratio 0.25 of one case keeps it whole): every combination was
    # measured on it, and predict quotes the one its input has
    assert availability[record["validation_cases"][0]] == [1, 1, 1, 1]
    model = _model(trained, "AllStageTrainer_1epoch")
    quoted = _predict_one(trained, model, (0, 1, 3), tmp_path / "measured")  # T1c missing
    measured = record["combinations"]["FLAIR+T1+T2"]
    assert quoted["sequences"] == ["FLAIR", "T1", "T2"] and quoted["combination"] == "FLAIR+T1+T2"
    assert measured["n_validation_cases"] == 1 and quoted["expected"]["dice"] == measured["dice"]
    assert quoted["expected"]["n_validation_cases"] == 1


# ---------------------------------------------------------------- the paper's ablations
def test_every_trainer_name_resolves_through_nnunets_lookup(workspace):
    """What nnUNetv2_train and nnUNetv2_predict do with -tr NAME finds each of our trainers, as the same class."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_allstage.training import trainer_classes
    for name, cls in trainer_classes().items():
        assert recursive_find_trainer_class_by_name(name) is cls, name


@pytest.mark.parametrize("trainer, expected", [
    ("AllStageDAFinetuneTrainer_1epoch", "initialised from stage 3"),
    ("AllStageTrainer_NoKD_1epoch", "recovering module initialised from stage 3"),
])
def test_ablation_trainer_through_nnunetv2_train(trained, trainer, expected):
    """Two rows of the paper's Tables 4-5 through nnUNetv2_train (every row takes its steps in the contract tests)."""
    trained.train(trainer)
    ckpt = checkpoint(trained, trainer)
    assert ckpt["trainer_name"] == trainer and ckpt["current_epoch"] == 1
    assert expected in next(trained.output_folder(trainer).glob("training_log_*.txt")).read_text()
    hyper = any(".hyper" in k or "code_table" in k for k in ckpt["network_weights"])
    assert hyper == trainer.startswith("AllStageTrainer") and ("recovery_weights" in ckpt["allstage"]) == hyper
