"""`nnunet-allstage train`: the four stages in order through nnU-Net's own `nnUNetv2_train`, each resumable."""
from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from nnunet_allstage.environment import dataset_name_from_id, model_folder, nnunet_folder, trainer_shim_dir
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.locks import PIPELINE_LOCK, TRAINER_LOCK, FoldLock
from nnunet_allstage.training import SCHEDULES, trainer_class, training_chain

# a step's time relative to stock nnUNetTrainer's, measured by scripts/benchmarks/bench_train_step.py on the CPU
# (documentation/benchmarks.md): what --chain-budget converts stock epochs into each stage's epochs with
STEP_COST = {"AllStageMAETrainer": 0.97, "AllStageHyperTrainer": 1.01, "AllStageMAEDATrainer": 1.68,
             "AllStageTrainer": 2.64, "AllStageDropoutTrainer": 1.0}
NNUNET_EPOCHS = 1000  # stock nnU-Net's schedule: 1000 epochs of 250 iterations

FINAL_TRAINER = "AllStageTrainer"
BINARY_FINAL_TRAINER = "AllStageTrainer_Binary"
BASELINE_TRAINER = "AllStageDropoutTrainer"


@dataclass
class Stage:
    title: str
    trainer: str
    folder: Path

    @property
    def state(self) -> str:
        if (self.folder / "checkpoint_final.pth").is_file():
            return "done"
        if (self.folder / "checkpoint_latest.pth").is_file():
            return "interrupted"
        return "not started"


def stages_for(dataset_id: int, fold: str, configuration: str, plans: str, schedule: str = "", baseline: bool = False,
               binary: bool = False, config=None) -> list[Stage]:
    """The runs that train the final model (or the baseline), in the order the trainers' predecessors give."""
    if schedule and schedule not in SCHEDULES:
        raise AllStageError(f"--schedule must be one of {', '.join(SCHEDULES)}")
    name = dataset_name_from_id(dataset_id)
    suffix = f"_{schedule}" if schedule else ""
    final = BASELINE_TRAINER if baseline else BINARY_FINAL_TRAINER if binary else FINAL_TRAINER
    out = []
    for trainer in training_chain(final, config if config is not None else run_config(dataset_id)):
        out.append(Stage(trainer_class(trainer).stage_name, trainer + suffix,
                         model_folder(name, trainer + suffix, plans, configuration) / f"fold_{fold}"))
    return out


def step_cost(trainer: str) -> float:
    """STEP_COST of the trainer or of the first class it derives from that has one (variants, ablations)."""
    return next(STEP_COST[k.__name__] for k in trainer_class(trainer).__mro__ if k.__name__ in STEP_COST)


def parse_weights(text: str, what: str) -> list[float]:
    try:
        weights = [float(w) for w in text.replace(",", ":").split(":")]
    except ValueError:
        weights = []
    if not weights or any(w <= 0 for w in weights):
        raise AllStageError(f"{what} takes positive numbers separated by ':' (one per stage), got {text!r}")
    return weights


def budget_epochs(stages: list[Stage], chain_budget: float, split: list[float]) -> list[int]:
    """Epochs of each stage, in proportion to ``split``, such that the whole chain costs ``chain_budget`` epochs of
    stock nnU-Net (by STEP_COST); at least one each."""
    if len(split) != len(stages):
        raise AllStageError(f"--split needs {len(stages)} weight(s), one per stage ({', '.join(s.trainer for s in stages)}), "
                            f"got {len(split)}")
    if chain_budget <= 0:
        raise AllStageError(f"--chain-budget must be positive, got {chain_budget:g}")
    unit = chain_budget / sum(w * step_cost(s.trainer) for w, s in zip(split, stages))
    return [max(1, round(w * unit)) for w in split]


def chain_cost(stages: list[Stage], epochs: list[int]) -> float:
    """The chain's cost in epochs of stock nnU-Net."""
    return sum(e * step_cost(s.trainer) for e, s in zip(epochs, stages))


def print_status(stages: list[Stage], log=print) -> None:
    width = max(len(s.trainer) for s in stages)
    for s in stages:
        log(f"  {s.title:<42} {s.trainer:<{width}}  {s.state}")


def run_config(dataset_id: int, env: dict | None = None):
    """The options the trainers of this run will read (the dataset's allstage_config.json, then the environment)."""
    from nnunet_allstage.config import load_config
    folder = nnunet_folder("nnUNet_preprocessed") / dataset_name_from_id(dataset_id)
    return load_config(folder, {**os.environ, **(env or {})})


def check_done_stage(stage: Stage, config) -> None:
    """A finished stage counts as done only if it was trained with the options that matter as they are now."""
    from nnunet_allstage.checkpoints import safe_load
    from nnunet_allstage.config import check_same_options
    checkpoint = stage.folder / "checkpoint_final.pth"
    recorded = safe_load(checkpoint).get("allstage", {}).get("options", {})
    check_same_options(recorded, config, trainer_class(stage.trainer).options_that_matter(),
                       f"{stage.title} ({checkpoint})",
                       f"set the options as they were, or move {stage.folder} away to train it again")


def train_command(dataset_id: int, fold, trainer: str, *, configuration: str = "3d_fullres",
                  plans: str = "nnUNetPlans", device: str = "cuda", num_gpus: int = 1, resume: bool = False,
                  extra_args: list[str] | None = None) -> list[str]:
    train_cmd = shutil.which("nnUNetv2_train") or str(Path(sys.executable).parent / "nnUNetv2_train")
    cmd = [train_cmd, str(dataset_id), configuration, str(fold), "-tr", trainer, "-p", plans, "-device", device]
    if num_gpus > 1:
        cmd += ["-num_gpus", str(num_gpus)]
    if resume:
        cmd.append("--c")
    return cmd + (extra_args or [])


EPOCH_FIELDS = {"epoch": re.compile(r": Epoch (\d+)\s*$"), "train loss": re.compile(r": train_loss (\S+)"),
                "val loss": re.compile(r": val_loss (\S+)"), "pseudo Dice": re.compile(r": Pseudo dice \[(.*)\]"),
                "time": re.compile(r": Epoch time: (\S+) s")}


def compact_epoch_lines(lines, title: str):
    """One line per finished epoch out of nnU-Net's training output (it logs each field on a line of its own)."""
    fields: dict[str, str] = {}
    for line in lines:
        for name, pattern in EPOCH_FIELDS.items():
            match = pattern.search(line)
            if match:
                value = match.group(1)
                if name == "pseudo Dice":
                    value = " ".join(f"{float(v):.2f}" for v in re.findall(r"[-\d.]+(?=\)|$|,)", value) if v)
                fields[name] = value
        if "time" in fields and "epoch" in fields:
            rest = ", ".join(f"{k} {fields[k]}" for k in ("train loss", "val loss", "pseudo Dice") if k in fields)
            yield f"  {title}: epoch {fields['epoch']}: {rest}, {fields['time']} s"
            fields = {}


def run_training(cmd: list[str], title: str, env: dict | None = None, log=print, compact: bool = False,
                 **popen) -> None:
    """One nnUNetv2_train run with the trainer shim on the path; a failure is an AllStageError. ``compact``: one
    line per epoch instead of nnU-Net's output (the full log stays in nnU-Net's training_log_*.txt); on failure
    the output's last lines are shown."""
    log(f"[run] {title}: {' '.join(cmd)}")
    env = {**os.environ, **(env or {}), "nnUNet_extTrainer": str(trainer_shim_dir())}
    if compact:
        tail: collections.deque = collections.deque(maxlen=40)
        with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            def remembered():
                for line in proc.stdout:
                    tail.append(line.rstrip())
                    yield line
            for summary in compact_epoch_lines(remembered(), title):
                log(summary)
        result = subprocess.CompletedProcess(cmd, proc.returncode)
        if result.returncode != 0:
            log("\n".join(tail))
        output = "\n".join(tail)
    else:
        # nnU-Net's progress streams as it comes; its stderr (warnings, a traceback) is shown when the run ends
        result = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True, **popen)
        output = result.stderr or ""
        if output:
            sys.stderr.write(output)
    if result.returncode != 0:
        ours = our_error(output)
        if ours:  # the trainer stopped on one of our errors: that line is the message
            raise AllStageError(f"{title}: {ours}")
        raise AllStageError(f"{title} failed (nnUNetv2_train exit code {result.returncode}); fix the cause above and "
                            f"re-run the same command: finished stages are skipped and interrupted ones continue")


def our_error(output: str) -> str | None:
    """The message of the last nnunet-allstage error in a traceback, if the run ended on one."""
    found = re.findall(r"^nnunet_allstage\.[\w.]*Error: (.+)$", output, re.M)
    return found[-1] if found else None


def run_pipeline(dataset_id: int, fold: str, *, configuration: str = "3d_fullres", plans: str = "nnUNetPlans",
                 schedule: str = "", baseline: bool = False, binary: bool = False, device: str = "cuda",
                 num_gpus: int = 1, extra_args: list[str] | None = None, env: dict | None = None, log=print,
                 compact: bool = False, stage_epochs: list[int] | None = None) -> None:
    """``stage_epochs``: each stage's epochs (default: each trainer's own schedule)."""
    config = run_config(dataset_id, env)
    stages = stages_for(dataset_id, fold, configuration, plans, schedule, baseline, binary, config)
    log(f"nnunet-allstage train: dataset {dataset_id}, fold {fold}, {configuration}, plans {plans}")
    if stage_epochs is not None:
        if len(stage_epochs) != len(stages) or any(e < 1 for e in stage_epochs):
            raise AllStageError(f"--stage-epochs needs {len(stages)} positive whole number(s), one per stage, got "
                                f"{stage_epochs}")
        cost = chain_cost(stages, stage_epochs)
        log(f"epochs per stage: {', '.join(f'{s.trainer} {e}' for s, e in zip(stages, stage_epochs))}; the chain "
            f"costs about {cost:.0f} epochs of stock nnU-Net ({cost / NNUNET_EPOCHS:.2f}x its {NNUNET_EPOCHS})")
    print_status(stages, log)
    lock = FoldLock(stages[-1].folder, PIPELINE_LOCK, "nnunet-allstage train")
    lock.acquire(log)
    try:
        for i, stage in enumerate(stages):
            if stage.state == "done":
                check_done_stage(stage, config)
                log(f"[skip] {stage.title}: {stage.folder / 'checkpoint_final.pth'} exists (same options)")
                continue
            FoldLock(stage.folder, TRAINER_LOCK, "training").check_free(log)  # one line, not a child's traceback
            cmd = train_command(dataset_id, fold, stage.trainer, configuration=configuration, plans=plans,
                                device=device, num_gpus=num_gpus, resume=stage.state == "interrupted",
                                extra_args=extra_args)
            stage_env = {**(env or {}), **({"NNUNET_ALLSTAGE_NUM_EPOCHS": str(stage_epochs[i])}
                                          if stage_epochs is not None else {})}
            run_training(cmd, stage.title, stage_env, log, compact=compact)
            if compact:
                log(f"  full log: {next(stage.folder.glob('training_log_*.txt'), stage.folder)}")
            if stage.state != "done":
                raise AllStageError(f"{stage.title} ended without {stage.folder / 'checkpoint_final.pth'}")
    finally:
        lock.release()
    log("all stages finished:")
    print_status(stages, log)
