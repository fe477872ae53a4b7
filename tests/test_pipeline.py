import json
import subprocess

import pytest

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.pipeline import run_pipeline, stages_for
from nnunet_allstage.training import trainer_classes

trainer_classes()  # nnU-Net's training stack is imported before the tests replace subprocess.run


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


NNUNET_EPOCH = """2026-11-29 10:35:13.384904: Epoch 4
2026-11-29 10:35:13.385000: Current learning rate: 0.00699
2026-11-29 10:37:09.594743: train_loss -0.1573
2026-11-29 10:37:09.594800: val_loss -0.3704
2026-11-29 10:37:09.594900: Pseudo dice [np.float32(0.6741), np.float32(0.0), np.float32(0.1234)]
2026-11-29 10:37:12.052078: Epoch time: 141.92 s
2026-11-29 10:37:12.052100: Yayy! New best EMA pseudo Dice: 0.2634
"""


def test_compact_output_one_line_per_epoch_and_the_tail_on_failure():
    import sys
    from nnunet_allstage.pipeline import compact_epoch_lines, run_training
    lines = list(compact_epoch_lines(NNUNET_EPOCH.splitlines() * 2, "stage 2"))
    assert lines == ["  stage 2: epoch 4: train loss -0.1573, val loss -0.3704, pseudo Dice 0.67 0.00 0.12, "
                     "141.92 s"] * 2
    script = f"import sys; print({NNUNET_EPOCH!r}); print('Traceback: the real reason'); sys.exit(3)"
    logs = []
    with pytest.raises(AllStageError, match="exit code 3"):
        run_training([sys.executable, "-c", script], "stage 2", log=logs.append, compact=True)
    assert len(logs) == 3 and logs[0].startswith("[run] stage 2")  # the command, one epoch line, the tail
    assert logs[1].startswith("  stage 2: epoch 4:") and "Traceback: the real reason" in logs[2]
