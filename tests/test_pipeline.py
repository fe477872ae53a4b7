import subprocess

import pytest

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.pipeline import run_pipeline, stages_for


def _dataset(nnunet_env):
    (nnunet_env / "nnUNet_raw" / "Dataset955_X").mkdir(parents=True)


def test_stages_skip_finished_and_continue_interrupted(nnunet_env, monkeypatch):
    _dataset(nnunet_env)
    stages = stages_for(955, "0", "3d_fullres", "nnUNetPlans", schedule="1epoch")
    assert [s.trainer for s in stages] == ["AllStageMAETrainer_1epoch", "AllStageHyperTrainer_1epoch",
                                           "AllStageMAEDATrainer_1epoch", "AllStageTrainer_1epoch"]
    stages[0].folder.mkdir(parents=True)
    (stages[0].folder / "checkpoint_final.pth").write_bytes(b"x")
    stages[1].folder.mkdir(parents=True)
    (stages[1].folder / "checkpoint_latest.pth").write_bytes(b"x")
    assert [s.state for s in stages] == ["done", "interrupted", "not started", "not started"]
    calls = []

    def fake_run(cmd, env):
        calls.append(cmd)
        trainer = cmd[cmd.index("-tr") + 1]
        folder = next(s.folder for s in stages if s.trainer == trainer)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "checkpoint_final.pth").write_bytes(b"x")
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
