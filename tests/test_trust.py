"""What never passes silently: a misspelt option, a checkpoint that does not record an option, a sidecar file that
cannot be read, a loss that stops being finite, two trainings of one fold, a copied model folder."""
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from conftest import DATASET_ID
from nnunet_allstage.errors import AllStageError


# ---------------------------------------------------------------- a misspelt NNUNET_ALLSTAGE_* variable
def test_a_misspelt_environment_option_stops_with_the_closest_known_one(monkeypatch):
    from nnunet_allstage.config import load_config
    monkeypatch.setenv("NNUNET_ALLSTAGE_BETA_KDD", "0.5")
    with pytest.raises(AllStageError, match=r"^environment variable NNUNET_ALLSTAGE_BETA_KDD is not an nnunet-allstage "
                                            r"option; did you mean NNUNET_ALLSTAGE_BETA_KD\?"):
        load_config()
    monkeypatch.delenv("NNUNET_ALLSTAGE_BETA_KDD")
    monkeypatch.setenv("NNUNET_ALLSTAGE_VENV", "/somewhere")  # the setup script's own variable is no option
    assert load_config().beta_kd == 0.1


@pytest.mark.parametrize("command", [["train", "-d", "1", "-device", "cpu"], ["evaluate", "-d", "1", "-device", "cpu"],
                                     ["predict", "-i", "x", "-o", "y", "-d", "1", "-device", "cpu"]])
def test_every_command_refuses_a_misspelt_option_in_one_line(monkeypatch, capsys, command):
    from nnunet_allstage.cli import main
    monkeypatch.setenv("NNUNET_ALLSTAGE_MASK_RATO", "0.5")
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NNUNET_ALLSTAGE_MASK_RATO" in err[0] and "NNUNET_ALLSTAGE_MASK_RATIO" in err[0]


# ---------------------------------------------------------------- a checkpoint that does not record an option
def test_a_predecessor_that_does_not_record_an_option_is_refused_unless_it_is_set(trained, tmp_path, monkeypatch):
    """A stage-2 checkpoint written before segmentation_optimizer existed: its optimiser is unknown, not today's
    default; setting the option explicitly accepts it knowingly."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    from nnunetv2.run.run_training import get_trainer_from_args
    old = torch.load(trained.output_folder("AllStageHyperTrainer_1epoch") / "checkpoint_final.pth",
                     map_location="cpu", weights_only=False)
    del old["allstage"]["options"]["segmentation_optimizer"]
    torch.save(old, tmp_path / "stage2_old.pth")
    monkeypatch.setenv("NNUNET_ALLSTAGE_STAGE2_CHECKPOINT", str(tmp_path / "stage2_old.pth"))
    monkeypatch.setenv("nnUNet_results", str(trained.root / "nnUNet_results"))

    def build():
        t = get_trainer_from_args(str(DATASET_ID), "3d_fullres", 0, "AllStageTrainer_1epoch", "nnUNetPlans",
                                  device=torch.device("cpu"))
        t.initialize()  # builds the frozen teacher from the stage-2 checkpoint
        return t

    with pytest.raises(AllStageError) as error:
        build()
    message = str(error.value)
    assert "does not record the option(s) segmentation_optimizer" in message
    assert "set NNUNET_ALLSTAGE_SEGMENTATION_OPTIMIZER" in message
    monkeypatch.setenv("NNUNET_ALLSTAGE_SEGMENTATION_OPTIMIZER", "paper")
    assert build().teacher is not None


# ---------------------------------------------------------------- a loss that stops being finite
def test_a_nan_loss_term_stops_training_and_the_last_checkpoint_stays(workspace, tmp_path, monkeypatch):
    """Stage 1 for two epochs with a checkpoint after each; L_rec turns NaN at the second iteration of epoch 1."""
    import nnunet_allstage.training.mae as mae
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunet_allstage.training.base import NonFiniteLossError
    for k, v in {"nnUNet_n_proc_DA": "0", "nnUNet_results": str(tmp_path), "NNUNET_ALLSTAGE_NUM_EPOCHS": "2",
                 "NNUNET_ALLSTAGE_SAVE_EVERY": "1"}.items():
        monkeypatch.setenv(k, v)
    calls = []
    real = mae.reconstruction_loss

    def reconstruction_loss(*args, **kwargs):
        loss = real(*args, **kwargs)
        if torch.is_grad_enabled():  # training steps only (nnU-Net validates without gradients)
            calls.append(1)
            if len(calls) == 4:  # epoch 1 (2 iterations per epoch), its second iteration
                return loss * float("nan")
        return loss
    monkeypatch.setattr(mae, "reconstruction_loss", reconstruction_loss)
    trainer = get_trainer_from_args(str(DATASET_ID), "3d_fullres", 0, "AllStageMAETrainer_5epochs", "nnUNetPlans",
                                    device=torch.device("cpu"))
    with pytest.raises(NonFiniteLossError) as error:
        trainer.run_training()
    folder = tmp_path / workspace.raw.name / "AllStageMAETrainer_5epochs__nnUNetPlans__3d_fullres" / "fold_0"
    assert str(error.value).startswith("L_rec is nan in epoch 1, iteration 2 of 2: training stopped; the last "
                                       f"checkpoint on disk is {folder / 'checkpoint_latest.pth'}")
    assert torch.load(folder / "checkpoint_latest.pth", map_location="cpu", weights_only=False)["current_epoch"] == 1
    assert not (folder / "checkpoint_final.pth").exists()
    assert not (folder / ".nnunet_allstage_training.lock").exists()  # released although training stopped


@pytest.mark.parametrize("term", ["L_task", "L_data", "L_KD"])
def test_each_stage4_term_is_checked(trained, monkeypatch, term):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    import nnunet_allstage.training.codistillation as codistillation
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunet_allstage.training.base import NonFiniteLossError
    t = get_trainer_from_args(str(DATASET_ID), "3d_fullres", 0, "AllStageTrainer_1epoch", "nnUNetPlans",
                              device=torch.device("cpu"))
    t.initialize()
    t.load_predecessors()
    t.dataloader_train, t.dataloader_val = t.get_dataloaders()
    before = {k: v.clone() for k, v in t.network.state_dict().items()}
    if term == "L_KD":
        monkeypatch.setattr(codistillation, "multi_level_mad", lambda *a: torch.tensor(float("inf")))
    else:
        calls = []
        real = t.loss

        def loss(output, target):  # the teacher's loss (L_data) is the first call of a step, the student's second
            calls.append(1)
            value = real(output, target)
            return value * float("nan") if len(calls) == (1 if term == "L_data" else 2) else value
        t.loss = loss
    with pytest.raises(NonFiniteLossError, match=rf"^{term} is (nan|inf) in epoch 0, iteration 1 of 2"):
        t.train_step(next(t.dataloader_train))
    assert all(torch.equal(v, t.network.state_dict()[k]) for k, v in before.items())  # the step was not applied


def test_the_segmentation_loss_of_nnunets_own_step_is_checked(trained, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunet_allstage.training.base import NonFiniteLossError
    t = get_trainer_from_args(str(DATASET_ID), "3d_fullres", 0, "AllStageDropoutTrainer_1epoch", "nnUNetPlans",
                              device=torch.device("cpu"))
    t.initialize()
    t.dataloader_train, t.dataloader_val = t.get_dataloaders()
    real = t.loss
    t.loss = lambda output, target: real(output, target) * float("nan")
    with pytest.raises(NonFiniteLossError, match=r"^L_seg is nan in epoch 0, iteration 1 of 2"):
        t.train_step(next(t.dataloader_train))


# ---------------------------------------------------------------- two trainings of one fold
def test_fold_lock_refuses_a_live_run_and_takes_over_a_dead_ones(tmp_path):
    from nnunet_allstage.locks import FoldLock
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock_file = tmp_path / "fold_0" / ".lock"
    lock_file.parent.mkdir()
    try:
        lock_file.write_text(json.dumps({"pid": running.pid, "host": socket.gethostname(), "since": "10:00",
                                         "command": "nnUNetv2_train 1 3d_fullres 0"}))
        with pytest.raises(AllStageError, match=rf"another training of this fold is running \(pid {running.pid}, "
                                                rf"since 10:00: nnUNetv2_train 1 3d_fullres 0\)"):
            FoldLock(lock_file.parent, ".lock", "training").acquire()
    finally:
        running.kill()
        running.wait()
    lock_file.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname()}))
    logs = []
    lock = FoldLock(lock_file.parent, ".lock", "training")
    lock.acquire(logs.append)
    assert logs and logs[0].startswith("note: taking over") and json.loads(lock_file.read_text())["pid"] == os.getpid()
    with pytest.raises(AllStageError, match="another training of this fold is running"):
        FoldLock(lock_file.parent, ".lock", "training").acquire()  # this process holds it now
    lock.release()
    assert not lock_file.exists()
    lock_file.write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(AllStageError, match="runs on host elsewhere"):
        FoldLock(lock_file.parent, ".lock", "training").acquire()


def test_a_trainer_refuses_to_start_while_another_trains_its_fold(workspace, tmp_path, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    t = get_trainer_from_args(str(DATASET_ID), "3d_fullres", 0, "AllStageMAETrainer_5epochs", "nnUNetPlans",
                              device=torch.device("cpu"))
    os.makedirs(t.output_folder, exist_ok=True)
    lock = os.path.join(t.output_folder, ".nnunet_allstage_training.lock")
    with open(lock, "w") as f:
        json.dump({"pid": os.getppid(), "host": socket.gethostname(), "command": "nnUNetv2_train ... (the first)"}, f)
    with pytest.raises(AllStageError, match=r"another training of this fold is running .*the first"):
        t.run_training()
    assert os.path.exists(lock)  # the other run's lock is left alone


# ---------------------------------------------------------------- sidecar files and copied models
def test_corrupt_sidecar_files_cost_what_they_record_never_a_prediction(trained, tmp_path):
    from test_stages_integration import _model, _predict_one, _validated
    from nnunet_allstage.inference import load_model
    from nnunet_allstage.synthesis import REFERENCE_FILE, load_synthesizer
    _validated(trained)
    folder = tmp_path / "model"
    shutil.copytree(trained.output_folder("AllStageTrainer_1epoch").parent, folder)
    # expected_accuracy.json cut short: the segmentation and predictions.json are still written
    (folder / "fold_0" / "expected_accuracy.json").write_text('{"checkpoint": "checkpoint_fi')
    quoted = _predict_one(trained, _model(trained, "AllStageTrainer_1epoch", folder), (0, 1, 3), tmp_path / "pred")
    assert quoted["expected"] is None and quoted["sequences"] == ["FLAIR", "T1", "T2"]
    assert any(line.startswith("WARNING:") and "expected_accuracy.json cannot be read" in line for line in quoted["logs"])
    # synthesized.json of an input folder cut short: a warning, the case predicted with its files taken as real
    inp = tmp_path / "synth_in"
    inp.mkdir()
    case = trained.test_case()
    for ch in range(4):
        shutil.copy(trained.raw / "imagesTs" / f"{case}_{ch:04d}.nii.gz", inp)
    (inp / "synthesized.json").write_text("{not json")
    from nnunet_allstage.prediction import predict_folder
    logs = []
    assert predict_folder(_model(trained, "AllStageTrainer_1epoch", folder), inp, tmp_path / "p2",
                          log=logs.append) == {case: "ok"}
    assert any("synthesized.json cannot be read" in line and "used, and listed, as real" in line for line in logs)
    # the intensity reference of synthesize: measured again, with a warning
    (folder / REFERENCE_FILE).write_text("[1, 2")
    logs = []
    synth = load_synthesizer(folder, 0, "checkpoint_final.pth", torch.device("cpu"), log=logs.append)
    assert set(synth.reference) == {"FLAIR", "T1", "T1c", "T2"} and json.loads((folder / REFERENCE_FILE).read_text())
    assert any(REFERENCE_FILE in line and "measured again" in line for line in logs)
    # a file the model cannot work without: one line naming it
    (folder / "plans.json").write_text("{")
    with pytest.raises(AllStageError, match=r"plans.json is not valid JSON .*the model's nnU-Net plans"):
        load_model(folder, 0, "checkpoint_final.pth", torch.device("cpu"), False, "copy")


def test_a_copied_model_keeps_its_expected_accuracy_and_a_retrained_one_does_not(trained, tmp_path):
    from test_stages_integration import _model, _predict_one, _validated
    record = _validated(trained)
    copy = tmp_path / "copied"
    shutil.copytree(trained.output_folder("AllStageTrainer_1epoch").parent, copy, copy_function=shutil.copyfile)
    quoted = _predict_one(trained, _model(trained, "AllStageTrainer_1epoch", copy), (0, 1, 3), tmp_path / "pred")
    assert quoted["expected"]["dice"] == record["combinations"]["FLAIR+T1+T2"]["dice"]
    checkpoint = torch.load(copy / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    first = next(k for k, v in checkpoint["network_weights"].items() if v.is_floating_point())
    checkpoint["network_weights"][first] += 1  # trained again: other weights, same file name
    torch.save(checkpoint, copy / "fold_0" / "checkpoint_final.pth")
    again = _predict_one(trained, _model(trained, "AllStageTrainer_1epoch", copy), (0, 1, 3), tmp_path / "pred2")
    assert again["expected"] is None
