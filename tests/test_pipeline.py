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
    """A checkpoint as a stage writes it, recording the options this process resolves (whatever NNUNET_ALLSTAGE_*
    variables the suite has set), changed by ``options``."""
    import torch
    from nnunet_allstage.config import describe, load_config
    folder.mkdir(parents=True, exist_ok=True)
    recorded = {**json.loads(describe(load_config())), **options}
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

    def fake_run(cmd, env, **_):
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
    monkeypatch.setattr(subprocess, "run", lambda cmd, env, **_: subprocess.CompletedProcess(cmd, 1))
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
    monkeypatch.setattr(subprocess, "run", lambda cmd, env, **_: pytest.fail("nothing may train"))
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


def test_a_stage_that_stops_on_our_error_reports_that_line():
    """nnUNetv2_train prints our error inside its traceback; `nnunet-allstage train` ends with that one line."""
    import sys
    from nnunet_allstage.pipeline import run_training
    script = ("import sys; print('Traceback (most recent call last):', file=sys.stderr); "
              "print('nnunet_allstage.training.base.NonFiniteLossError: L_KD is nan in epoch 3', file=sys.stderr); "
              "sys.exit(1)")
    with pytest.raises(AllStageError) as error:
        run_training([sys.executable, "-c", script], "stage 4", log=lambda *_: None)
    assert str(error.value) == "stage 4: L_KD is nan in epoch 3"


def test_chain_budget_in_epochs_of_stock_nnunet(nnunet_env):
    from nnunet_allstage.pipeline import STEP_COST, budget_epochs, chain_cost
    _dataset(nnunet_env)
    stages = stages_for(955, "0", "3d_fullres", "nnUNetPlans")
    costs = [STEP_COST[t] for t in ("AllStageMAETrainer", "AllStageHyperTrainer", "AllStageMAEDATrainer",
                                    "AllStageTrainer")]
    # 1:1:1:1 at 1000 stock epochs: 1000 / (0.97 + 1.01 + 1.68 + 2.64) = 158.7 -> 159 epochs each
    assert budget_epochs(stages, 1000, [1, 1, 1, 1]) == [159] * 4
    # 1:1:0.25:3: unit 1000 / (0.97 + 1.01 + 0.42 + 7.92) = 96.9 -> 97, 97, 24, 291
    epochs = budget_epochs(stages, 1000, [1, 1, 0.25, 3])
    assert epochs == [97, 97, 24, 291]
    assert chain_cost(stages, epochs) == pytest.approx(sum(e * c for e, c in zip(epochs, costs)))
    with pytest.raises(AllStageError, match="--split needs 4 weight"):
        budget_epochs(stages, 1000, [1, 1])
    baseline = stages_for(955, "0", "3d_fullres", "nnUNetPlans", baseline=True)
    assert budget_epochs(baseline, 1000, [1]) == [1000]


def test_train_with_a_chain_budget_sets_each_stages_epochs(nnunet_env, monkeypatch):
    from nnunet_allstage.cli import main
    _dataset(nnunet_env)
    epochs = {}

    def fake_run(cmd, env, **_):
        trainer = cmd[cmd.index("-tr") + 1]
        epochs[trainer] = env["NNUNET_ALLSTAGE_NUM_EPOCHS"]
        _finished(next(s.folder for s in stages_for(955, "0", "3d_fullres", "nnUNetPlans") if s.trainer == trainer))
        return subprocess.CompletedProcess(cmd, 0)
    monkeypatch.setattr(subprocess, "run", fake_run)
    assert main(["train", "-d", "955", "-device", "cpu", "--chain-budget", "1000", "--split", "1:1:0.25:3",
                 "--no-validate"]) == 0
    assert epochs == {"AllStageMAETrainer": "97", "AllStageHyperTrainer": "97", "AllStageMAEDATrainer": "24",
                      "AllStageTrainer": "291"}
    assert main(["train", "-d", "955", "-device", "cpu", "--split", "1:1:1:1"]) == 2  # a split of no budget


def test_a_second_train_of_the_same_fold_is_refused_and_a_dead_ones_lock_taken_over(nnunet_env, monkeypatch, capsys):
    import socket
    import sys
    from nnunet_allstage.cli import main
    from nnunet_allstage.locks import PIPELINE_LOCK
    _dataset(nnunet_env)
    final = stages_for(955, "0", "3d_fullres", "nnUNetPlans")[-1].folder
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        final.mkdir(parents=True)  # the lock as the other run wrote it
        (final / PIPELINE_LOCK).write_text(json.dumps({"pid": running.pid, "host": socket.gethostname(),
                                                       "since": "now", "command": "nnunet-allstage train -d 955"}))
        monkeypatch.setattr(subprocess, "run", lambda cmd, env, **_: pytest.fail("nothing may train"))
        assert main(["train", "-d", "955", "-device", "cpu", "--no-validate"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"another nnunet-allstage train of this fold is running (pid {running.pid}" in err[0]
    finally:
        running.kill()
        running.wait()
    # the other run is gone: its lock is taken over, and released again at the end
    stages = stages_for(955, "0", "3d_fullres", "nnUNetPlans")
    for stage in stages:
        _finished(stage.folder)
    logs = []
    from nnunet_allstage.pipeline import run_pipeline
    run_pipeline(955, "0", device="cpu", log=logs.append)
    assert any(line.startswith("note: taking over") for line in logs) and not (final / PIPELINE_LOCK).exists()
