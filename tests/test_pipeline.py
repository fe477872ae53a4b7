import json
import subprocess

import pytest

import nnunet_allstage.training.trainers  # noqa: F401  (imported before subprocess.run is replaced)

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.pipeline import run_pipeline, stages_for


def _dataset(nnunet_env):
    (nnunet_env / "nnUNet_raw" / "Dataset955_X").mkdir(parents=True)


def _finished(folder, name="checkpoint_final.pth", **options):
    """A checkpoint as a stage writes it, recording the resolved options (the defaults, changed by ``options``)."""
    import torch
    from nnunet_allstage.config import AllStageConfig, describe
    folder.mkdir(parents=True, exist_ok=True)
    recorded = {**json.loads(describe(AllStageConfig())), **options}
    torch.save({"network_weights": {}, "allstage": {"options": recorded}}, folder / name)


def test_stages_skip_finished_and_continue_interrupted(nnunet_env, monkeypatch):
    _dataset(nnunet_env)
    stages = stages_for(955, "0", "3d_fullres", "nnUNetPlans", schedule="1epoch")
    assert [s.trainer for s in stages] == ["AllStageMAETrainer_1epoch", "AllStageHyperTrainer_1epoch",
                                           "AllStageMAEDATrainer_1epoch", "AllStageTrainer_1epoch"]
    _finished(stages[0].folder)
    _finished(stages[1].folder, "checkpoint_latest.pth")
    assert [s.state for s in stages] == ["done", "interrupted", "not started", "not started"]
    calls = []

    def fake_run(cmd, env):
        calls.append(cmd)
        trainer = cmd[cmd.index("-tr") + 1]
        _finished(next(s.folder for s in stages if s.trainer == trainer))
        assert env["nnUNet_extTrainer"]
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(subprocess, "run", fake_run)
    logs = []
    run_pipeline(955, "0", schedule="1epoch", device="cpu", num_gpus=2, log=logs.append)
    assert [c[c.index("-tr") + 1] for c in calls] == ["AllStageHyperTrainer_1epoch", "AllStageMAEDATrainer_1epoch",
                                                      "AllStageTrainer_1epoch"]
    assert "--c" in calls[0] and "--c" not in calls[1]
    assert all(c[c.index("-num_gpus") + 1] == "2" and c[c.index("-device") + 1] == "cpu" for c in calls)
    assert any("[skip] stage 1" in line for line in logs)


def test_failed_stage_is_a_clear_error(nnunet_env, monkeypatch):
    _dataset(nnunet_env)
    monkeypatch.setattr(subprocess, "run", lambda cmd, env: subprocess.CompletedProcess(cmd, 1))
    with pytest.raises(AllStageError, match="re-run the same command"):
        run_pipeline(955, "0", baseline=True, device="cpu", log=lambda *_: None)
    with pytest.raises(AllStageError, match="--schedule"):
        stages_for(955, "0", "3d_fullres", "nnUNetPlans", schedule="2epochs")
    assert stages_for(955, "all", "3d_fullres", "P", binary=True)[3].trainer == "AllStageTrainer_Binary"


def test_finished_stage_with_other_options_is_refused(nnunet_env, monkeypatch):
    """A stage trained with other options that matter to it is not silently reused; other options do not count."""
    _dataset(nnunet_env)
    stages = stages_for(955, "0", "3d_fullres", "nnUNetPlans", schedule="1epoch")
    _finished(stages[0].folder, mask_ratio=0.5, beta_kd=0.7)  # beta_kd does not matter to stage 1
    monkeypatch.setattr(subprocess, "run", lambda cmd, env: pytest.fail("nothing may train"))
    with pytest.raises(AllStageError) as error:
        run_pipeline(955, "0", schedule="1epoch", device="cpu", log=lambda *_: None)
    message = str(error.value)
    assert "mask_ratio: 0.5 -> 0.875" in message and "beta_kd" not in message
    assert "move " + str(stages[0].folder) in message
