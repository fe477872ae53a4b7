#!/usr/bin/env python
"""Real-data study on BraTS cases on the CPU: what the method buys for its compute, against nnU-Net + modality
dropout (MDrop), at one or several budgets.

Converts the training cases at FM ratio 0.25 (optionally keeping the labels of only a fraction of them), plans at a
coarse target spacing CPU training can afford, trains every row of a ladder on all training cases (nnU-Net fold
`all`) at each per-trainer budget (runs shared between rows are trained once), and evaluates every row on the same
test cases over the 15 input combinations. Beside each ladder, nnU-Net + MDrop is trained at 1x, 2x, 4x and 8x the
per-trainer budget: the baseline's accuracy-versus-compute curve.

Cost: before training, the s/it of every trainer of the study is measured against stock `nnUNetTrainer` on the
study's own plans (fastest of two rounds, the benchmark's rule); a run's cost is its iterations times that ratio,
and a chain's cost is the sum over every run it starts from, each counted once, in stock-nnU-Net-iteration
equivalents (the x axis of frontier.png does not depend on the machine). Minutes are wall time on this machine.

    python scripts/studies/study_real.py --budgets 128,512 --seeds 2 --resume         # the frontier, ladder 'method'
    python scripts/studies/study_real.py --chain-budget 3200 --splits 1:1:1:1,1:2:0.5:4 --rows --resume
    python scripts/studies/study_real.py --labelled-fraction 0.5 --budgets 128,512      # scarce labels
    python scripts/studies/study_real.py --ladder table4 --budgets 128                  # the paper's Table 4
    python scripts/studies/study_real.py --ladder recipe --rows stage2,stage4,stage2-again  # rows by name

Without --test-src, the four cases of the 12-case BraTS 2018 sample that split 3 puts in its test set are held
back and the other eight train. Each seed converts its own simulated dataset (FM draw) and trains every run again.
Outputs under --workdir: study_summary.json, study_results.md (the form of documentation/results.md, to paste),
frontier.png, and every evaluation.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from nnunet_allstage.training import trainer_class  # noqa: E402

DEFAULT_SRC = REPO.parent / "shared" / "data" / "brats2018_sample" / "MICCAI_BraTS_2018_Data_Training"
HELD_BACK = ("Brats18_2013_3_1", "Brats18_CBICA_AME_1", "Brats18_TCIA01_425_1", "Brats18_TCIA10_637_1")
STUDY_DATASET_ID = 902
STUDY_TEST_DATASET_ID = 903
STOCK = "nnUNetTrainer"
BASELINE = "AllStageDropoutTrainer"
# the trainers a --splits weight applies to, in the order of the split's fields
CHAIN = ("AllStageMAETrainer", "AllStageHyperTrainer", "AllStageMAEDATrainer", "AllStageTrainer")


@dataclass(frozen=True)
class Row:
    name: str  # what --rows, --reference and the summary call it
    label: str  # shown in tables
    trainer: str
    options: tuple = ()  # (name, value) pairs of NNUNET_ALLSTAGE_* options
    # > 0: another training run of the row's own trainer (its predecessors shared), to measure training noise
    rerun: int = 0

    @property
    def option_dict(self) -> dict:
        return dict(self.options)


def row(name: str, label: str, trainer: str, rerun: int = 0, **options) -> Row:
    return Row(name, label, trainer, tuple(sorted(options.items())), rerun)


ROWS = {r.name: r for r in [
    row("stage2", "stage 2: hyper-network (the teacher)", "AllStageHyperTrainer"),
    row("stage4", "stage 4: co-distillation (deployed)", "AllStageTrainer"),
    row("mae-finetune", "MAE baseline", "AllStageMAEFinetuneTrainer"),
    row("da-finetune", "+ distribution approximation", "AllStageDAFinetuneTrainer"),
    row("da-hyper", "+ CLIP-driven hyper-network", "AllStageDAHyperTrainer"),
    row("table5-a", "(a) DA baseline, static head", "AllStageDAFinetuneTrainer_Binary"),
    row("table5-b", "(b) KD from the hyper-teacher, no recovery", "AllStageTrainer_ModelDistNoMAE_Binary"),
    row("table5-c", "(c) KD + frozen g's fill-ins", "AllStageTrainer_NoDataRefinement_Binary"),
    row("table5-d", "(d) co-distillation, teacher without hyper-network", "AllStageTrainer_NoHyperTeacher_Binary"),
    row("table5-e", "(e) co-distillation, binary-code hyper-teacher", "AllStageTrainer_Binary"),
    row("da-hyper-binary", "hyper-network, binary codes", "AllStageDAHyperTrainer_Binary"),
    row("stage4-g-slow", "stage 4, g at 0.03x the student's lr", "AllStageTrainer", recovery_lr_scale="0.03"),
    row("stage4-from-stage2", "stage 4, student from stage 2", "AllStageTrainer", student_init="stage2"),
    row("stage4-g-masked", "stage 4, g sees masked input", "AllStageTrainer", recovery_input="masked"),
    row("stage2-sgd", "stage 2, nnU-Net's optimiser (SGD 1e-2, poly)", "AllStageHyperTrainer",
        segmentation_optimizer="nnunet"),
    row("stage4-sgd", "stage 4, nnU-Net's optimiser in stages 2 and 4", "AllStageTrainer",
        segmentation_optimizer="nnunet"),
    row("stage2-full-0.5", "stage 2, MDrop keeps the full set with p = 0.5", "AllStageHyperTrainer",
        full_set_probability="0.5"),
    row("stage4-full-0.5", "stage 4, MDrop keeps the full set with p = 0.5", "AllStageTrainer",
        full_set_probability="0.5"),
    row("stage2-full-0.25", "stage 2, MDrop keeps the full set with p = 0.25", "AllStageHyperTrainer",
        full_set_probability="0.25"),
    row("stage4-full-0.25", "stage 4, MDrop keeps the full set with p = 0.25", "AllStageTrainer",
        full_set_probability="0.25"),
    # lambda_seg at the value that gives Eq. 3 the paper's balance: the paper's L_rec is an MSE on intensities
    # scaled to [0, 1] (divided by each volume's maximum), ours on z-scores (divided by the brain's sd), so ours is
    # 1 / mean(sd^2 / max^2) = 91 times larger on the sample's training volumes (32 of them): 0.1 * 91 = 9.1
    row("stage4-lambda-paper-ratio", "stage 4, lambda_seg 9.1 (the paper's L_seg : L_rec ratio)", "AllStageTrainer",
        lambda_seg="9.1"),
    row("stage4-from-stage2-sgd", "stage 4, student from stage 2, nnU-Net's optimiser in stages 2 and 4",
        "AllStageTrainer", student_init="stage2", segmentation_optimizer="nnunet"),
    row("stage2-again", "stage 2 again: a second training run of the same recipe (training noise)",
        "AllStageHyperTrainer", rerun=1),
    row("stage4-again", "stage 4 again: a second training run of the same recipe (training noise)",
        "AllStageTrainer", rerun=1),
]}
LADDERS = {
    "method": ["stage2", "stage4"],
    "table4": ["mae-finetune", "da-finetune", "da-hyper", "stage4", "stage2"],
    "table5": ["table5-a", "table5-b", "table5-c", "table5-d", "table5-e"],
    "fig5": ["da-finetune", "da-hyper-binary", "da-hyper"],
    "recipe": ["stage2", "stage4", "stage4-g-slow", "stage4-from-stage2", "stage4-g-masked", "stage2-sgd",
               "stage4-sgd", "stage2-full-0.5", "stage4-full-0.5", "stage2-full-0.25", "stage4-full-0.25",
               "stage4-lambda-paper-ratio", "stage4-from-stage2-sgd", "stage2-again", "stage4-again"],
}
MDROP = row("mdrop", "nnU-Net + MDrop", BASELINE)


def select_rows(ladder: str, spec: str | None) -> list[Row]:
    """The rows named by --rows (names from any ladder, comma-separated), or the whole ladder."""
    names = [n.strip() for n in spec.split(",") if n.strip()] if spec is not None else LADDERS[ladder]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        sys.exit(f"--rows: no row named {unknown[0]!r} (rows: {', '.join(ROWS)})")
    return [ROWS[n] for n in dict.fromkeys(names)]


# ------------------------------------------------------------------------------------------------ budgets and jobs
@dataclass(frozen=True)
class Schedule:
    """Training iterations of each trainer of a chain: ``default`` for any trainer ``per_trainer`` does not name."""
    name: str
    default: int
    per_trainer: tuple = ()  # (trainer, iterations) pairs

    def iterations(self, trainer: str) -> int:
        return dict(self.per_trainer).get(trainer, self.default)


def parse_split(text: str) -> tuple[float, ...]:
    try:
        weights = tuple(float(w) for w in text.split(":"))
    except ValueError:
        weights = ()
    if len(weights) != len(CHAIN) or any(w <= 0 for w in weights):
        sys.exit(f"--splits: {text!r} must be {len(CHAIN)} positive weights a:b:c:d (stages 1-4)")
    return weights


def split_schedule(weights: tuple[float, ...], chain_budget: float, step_ratio: dict, iterations_per_epoch: int
                   ) -> Schedule:
    """Iterations of stages 1-4 in proportion to ``weights`` such that the chain costs ``chain_budget`` stock
    iterations, each rounded to whole epochs (at least one)."""
    unit = chain_budget / sum(w * step_ratio[t] for w, t in zip(weights, CHAIN))
    its = [max(1, round(w * unit / iterations_per_epoch)) * iterations_per_epoch for w in weights]
    label = ":".join(format(w, "g") for w in weights)
    return Schedule(f"split {label}", its[0], tuple(zip(CHAIN, its)))


@dataclass(frozen=True)
class Job:
    """One training run: a trainer, the resolved options that matter to it, its iterations, which run of these it
    is, and the runs it starts from."""
    trainer: str
    options: tuple
    iterations: int
    rerun: int
    predecessors: tuple

    @property
    def key(self) -> str:
        parts = [self.trainer, json.dumps(self.options), str(self.iterations), f"rerun{self.rerun}"]
        parts += [p.key for p in self.predecessors]
        return hashlib.sha1("|".join(parts).encode()).hexdigest()[:10]

    def chain(self) -> dict[str, "Job"]:
        """Every run this one starts from, each once, in training order, then this run itself; by key."""
        out = {}
        for p in self.predecessors:
            out.update(p.chain())
        out[self.key] = self
        return out


def resolved_options(options: dict) -> dict:
    """Every option as a trainer run with these NNUNET_ALLSTAGE_* settings reads it (so a row that spells out a
    default shares the default row's runs)."""
    from nnunet_allstage.config import load_config
    return asdict(load_config(None, {**os.environ, **option_env(options)}))


def option_env(options: dict) -> dict:
    """The NNUNET_ALLSTAGE_* variables that give a run these options."""
    return {f"NNUNET_ALLSTAGE_{k.upper()}": str(v) for k, v in options.items()}


def make_job(trainer: str, options: dict, schedule: Schedule, rerun: int = 0) -> Job:
    from nnunet_allstage.config import AllStageConfig
    resolved = resolved_options(options)
    cls = trainer_class(trainer)
    relevant = tuple((k, resolved[k]) for k in cls.options_that_matter())
    predecessors = tuple(make_job(p, options, schedule) for p in cls.predecessor_names(AllStageConfig(**resolved)))
    return Job(trainer, relevant, schedule.iterations(trainer), rerun, predecessors)


def chain_cost(job: Job, step_ratio: dict) -> float:
    """Stock-nnU-Net-iteration equivalents of the run and every run it starts from."""
    return sum(j.iterations * step_ratio.get(j.trainer, math.nan) for j in job.chain().values())


class Jobs:
    """Trains each distinct run once, in its own nnUNet_results with links to its predecessors' folders."""

    def __init__(self, root: Path, dataset: str, plans: str, args, base_env: dict):
        self.root, self.dataset, self.plans, self.args, self.base_env = root, dataset, plans, args, base_env

    def folder(self, job: Job) -> Path:
        return self.root / job.key / self.dataset / f"{job.trainer}__{self.plans}__3d_fullres"

    def minutes(self, job: Job) -> float:
        record = self.folder(job) / "fold_all" / "study_minutes.json"
        return json.loads(record.read_text())["minutes"] if record.is_file() else math.nan

    def chain_minutes(self, job: Job) -> float:
        return sum(self.minutes(j) for j in job.chain().values())

    def train(self, job: Job, options: dict) -> Path:
        from nnunet_allstage.pipeline import run_training, train_command
        folder = self.folder(job)
        fold = folder / "fold_all"
        if (fold / "checkpoint_final.pth").is_file():
            return folder
        for predecessor in job.predecessors:
            source = self.train(predecessor, options)
            link = folder.parent / source.name
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source, target_is_directory=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        epochs = job.iterations // self.args.iterations
        env = {**self.base_env, **option_env(options),
               "NNUNET_ALLSTAGE_NUM_EPOCHS": str(epochs), "nnUNet_results": str(folder.parents[1])}
        resume = (fold / "checkpoint_latest.pth").is_file()
        t = time.time()
        run_training(train_command(STUDY_DATASET_ID, "all", job.trainer, plans=self.plans, device=self.args.device,
                                   resume=resume),
                     f"{job.trainer} {options or ''} {job.iterations} it" + (f" run {job.rerun + 1}" if job.rerun
                                                                             else ""), env)
        (fold / "study_minutes.json").write_text(json.dumps({"minutes": (time.time() - t) / 60, "resumed": resume}))
        return folder


def loss_terms(folder: Path) -> dict:
    """Per-epoch training loss terms the trainer logged beyond nnU-Net's own (train_*), from checkpoint_final."""
    from nnunet_allstage.checkpoints import safe_load
    logging = safe_load(folder / "fold_all" / "checkpoint_final.pth").get("logging", {})
    return {k: v for k, v in logging.items() if k.startswith("train_") and k != "train_losses"} | \
        {"train_losses": logging.get("train_losses", [])}


# ------------------------------------------------------------------------------------------------ one seed
@dataclass
class Entry:
    """One evaluated model: a row trained on a schedule, read from one checkpoint."""
    row: Row
    schedule: Schedule
    section: str  # "budget" or "split"
    checkpoint: str = "checkpoint_final.pth"

    @property
    def name(self) -> str:
        best = " (checkpoint_best)" if self.checkpoint != "checkpoint_final.pth" else ""
        return f"{self.row.name} @ {self.schedule.name}{best}"


@dataclass
class SeedResult:
    """What one seed measured for each entry (by entry name)."""
    seed: int
    per_case_dice: dict  # {entry: {case: {region: mean Dice over combinations, 'avg': ...}}}
    hd95: dict  # {entry: mean HD95 over cases, combinations and regions}
    cost: dict  # {entry: chain cost in stock iterations}
    minutes: dict  # {entry: [own, chain] training minutes}
    iterations: dict  # {entry: {trainer: iterations} of the chain}
    loss_terms: dict  # {entry: {trainer: {term: per-epoch values}}}
    step_ratio: dict  # {trainer: s/it relative to stock nnUNetTrainer}
    timing: dict  # training and evaluation minutes of this seed


# two rounds of one trainer's step further apart than this: something else ran on the machine (alone, the
# rounds of the study's trainers agree within 10 %; beside a test run they were up to 5x apart)
ROUNDS_AGREE = 1.25
STEP_ATTEMPTS = 3


def disagreeing_rounds(steps: dict) -> str:
    """'trainer max/min, ...' of the trainers whose rounds are further apart than ROUNDS_AGREE; '' if none."""
    spread = {name: max(r["rounds_s"]) / min(r["rounds_s"]) for name, r in steps.items()}
    return ", ".join(f"{name} {ratio:.1f}x" for name, ratio in spread.items() if ratio > ROUNDS_AGREE)


def measure_step_ratios(trainers: list[str], plans: str, workdir: Path, device: str) -> dict:
    """{trainer: s/it / stock's s/it} on the study's plans, measured by the benchmark (fastest of two rounds of
    five steps each, measured again while the rounds disagree), with untrained predecessors in a results folder of
    its own. Measured once per seed folder."""
    saved = workdir / "step_ratios.json"
    if saved.is_file():
        return json.loads(saved.read_text())["ratio"]
    sys.path.insert(0, str(REPO / "scripts" / "benchmarks"))
    import torch
    from bench_common import untrained_checkpoint
    from bench_train_step import measure_steps
    from nnunet_allstage.config import AllStageConfig
    from nnunet_allstage.training import training_chain
    order = list(dict.fromkeys(t for trainer in trainers for t in training_chain(trainer, AllStageConfig())))
    results_dir = os.environ["nnUNet_results"]
    # the benchmark's processes read their checkpoints from <its workdir>/nnUNet_results
    os.environ["nnUNet_results"] = str(workdir / "bench" / "nnUNet_results")
    try:
        for name in order:
            untrained_checkpoint(STUDY_DATASET_ID, name, torch.device("cpu"), plans)
        for attempt in range(1, STEP_ATTEMPTS + 1):
            steps = measure_steps(STUDY_DATASET_ID, plans, device, 5, 1, workdir / "bench", [STOCK] + order,
                                  rounds=2)
            busy = disagreeing_rounds(steps)
            if not busy:
                break
            print(f"step costs: rounds disagree ({busy}), attempt {attempt}/{STEP_ATTEMPTS}", flush=True)
        else:
            sys.exit(f"step costs of {busy} differ between rounds by more than {ROUNDS_AGREE}x: other work is "
                     "using the cores, which would mis-match every compute-matched baseline; run the study alone "
                     "(nothing was saved; rerun with --resume)")
    finally:
        os.environ["nnUNet_results"] = results_dir
    stock = steps[STOCK]["median_s"]
    ratio = {name: r["median_s"] / stock for name, r in steps.items()}
    saved.write_text(json.dumps({"ratio": ratio, "seconds": {n: r["median_s"] for n, r in steps.items()},
                                 "rounds_s": {n: r["rounds_s"] for n, r in steps.items()}}, indent=1))
    return ratio


def per_case_metrics(results_csv: Path) -> tuple[dict, float]:
    """({case: {region: mean Dice over combinations, 'avg': mean over regions}}, mean HD95) of one model."""
    dice: dict = {}
    hd95 = []
    for r in csv.DictReader(open(results_csv)):
        dice.setdefault(r["case"], {}).setdefault(r["region"], []).append(float(r["dice"]))
        hd95.append(float(r["hd95"]))
    out = {}
    for case, regions in dice.items():
        means = {region: float(np.mean(v)) for region, v in regions.items()}
        means["avg"] = float(np.mean(list(means.values())))
        out[case] = means
    return out, float(np.mean(hd95))


def prepare_seed(seed: int, train_cases, test_root: Path, workdir: Path, args) -> tuple[str, str, Path]:
    """Convert (FM draw of this seed) and plan the training cases, convert the test cases; reused when there."""
    from nnunet_allstage.conversion import convert_brats
    from nnunet_allstage.planning import plan_dataset, spacing_plans_name
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(workdir / name)
    plans = spacing_plans_name("nnUNetPlans", [args.spacing] * 3)
    done = workdir / "prepared.json"
    if done.is_file():
        info = json.loads(done.read_text())
        return info["dataset"], plans, Path(info["test_raw"])
    shutil.rmtree(workdir, ignore_errors=True)
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (workdir / name).mkdir(parents=True)
    train_source = workdir / "train_source"
    _link_cases(train_cases, train_source)
    extra = {"labelled_fraction": args.labelled_fraction} if args.labelled_fraction is not None else {}
    train_raw = convert_brats(train_source, dataset_id=STUDY_DATASET_ID, name="BraTSStudy",
                              split=_all_training("study-train", [c.case_id for c in train_cases]),
                              fm_ratio=args.fm_ratio, seed=seed, num_processes=2, **extra)
    # the test cases form their own dataset, converted with their own year's layout and label values and kept
    # complete (no FM simulation): evaluation drops the sequences of each combination itself
    test_raw = convert_brats(test_root, dataset_id=STUDY_TEST_DATASET_ID, name="BraTSStudyTest",
                             split=_all_training("study-test", sorted(p.name for p in test_root.iterdir())),
                             num_processes=2)
    assert plan_dataset(STUDY_DATASET_ID, target_spacing=[args.spacing] * 3, num_processes=2) == plans
    done.write_text(json.dumps({"dataset": train_raw.name, "test_raw": str(test_raw)}))
    return train_raw.name, plans, test_raw


def chain_budget(spec: str, step_ratio: dict) -> float:
    """--chain-budget in stock iterations: a number, or 'equal:B', the cost of the chain with B iterations in
    each stage as measured in this run (the split 1:1:1:1 is then that very chain)."""
    if spec.startswith("equal:"):
        return sum(int(spec[6:]) * step_ratio[t] for t in CHAIN)
    return float(spec)


SAME_COST = "the chain's cost"


def entries_of(rows: list[Row], args, step_ratio: dict) -> list[Entry]:
    """Every model the study evaluates: each row at each budget, MDrop at each multiple of each budget, and with
    --chain-budget the full method at each split and MDrop at the same cost."""
    entries = []
    for budget in args.budgets:
        schedule = Schedule(f"{budget} it/trainer", budget)
        for r in rows:
            entries.append(Entry(r, schedule, "budget"))
            if args.also_best and r.trainer != BASELINE:
                entries.append(Entry(r, schedule, "budget", "checkpoint_best.pth"))
        if not args.no_baselines and args.baseline_iterations is None:
            for k in args.baseline_multiples:
                entries.append(Entry(MDROP, Schedule(f"{k * budget} it", k * budget), "budget"))
    if not args.no_baselines:
        for its in args.baseline_iterations or []:
            entries.append(Entry(MDROP, Schedule(f"{its} it", its), "budget"))
    if args.chain_budget:
        budget = chain_budget(args.chain_budget, step_ratio)
        for weights in args.splits:
            entries.append(Entry(ROWS["stage4"], split_schedule(weights, budget, step_ratio, args.iterations),
                                 "split"))
        # named by its role, not its iterations: each seed matches the cost with its own measured step costs
        its = max(1, round(budget / step_ratio[BASELINE] / args.iterations)) * args.iterations
        entries.append(Entry(MDROP, Schedule(SAME_COST, its), "split"))
    unique = {}
    for e in entries:
        unique.setdefault(e.name, e)
    return list(unique.values())


def run_seed(seed: int, rows: list[Row], train_cases, test_root: Path, workdir: Path, args) -> tuple[SeedResult, list]:
    """Prepare, measure step costs, train every run not trained yet, evaluate every model not evaluated yet."""
    dataset, plans, test_raw = prepare_seed(seed, train_cases, test_root, workdir, args)
    trainers = list(dict.fromkeys([r.trainer for r in rows] + [BASELINE] + (list(CHAIN) if args.chain_budget else [])))
    step_ratio = measure_step_ratios(trainers, plans, workdir, args.device)
    entries = entries_of(rows, args, step_ratio)
    base_env = {"NNUNET_ALLSTAGE_ITERATIONS_PER_EPOCH": str(args.iterations),
                "NNUNET_ALLSTAGE_VAL_ITERATIONS_PER_EPOCH": "2",
                "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "1")}
    jobs = Jobs(workdir / "runs", dataset, plans, args, base_env)
    job_of = {e.name: make_job(e.row.trainer, e.row.option_dict, e.schedule, e.row.rerun) for e in entries}
    for e in entries:
        jobs.train(job_of[e.name], e.row.option_dict)
    every_run = {j.key: j for e in entries for j in job_of[e.name].chain().values()}
    training_minutes = sum(jobs.minutes(j) for j in every_run.values())

    import torch
    from nnunet_allstage.evaluation import evaluate, find_test_cases
    from nnunet_allstage.inference import load_model
    from nnunet_allstage.modalities import combinations
    cases = find_test_cases(test_raw / "imagesTr", test_raw / "labelsTr", ".nii.gz", 4)
    evaluation_minutes = 0.0
    result = SeedResult(seed, {}, {}, {}, {}, {}, {}, step_ratio, {})
    for e in entries:
        job = job_of[e.name]
        out = workdir / "evaluation" / f"{job.key}_{e.checkpoint.removesuffix('.pth')}"
        if not (out / "results.csv").is_file():
            t = time.time()
            model = load_model(jobs.folder(job), "all", e.checkpoint, torch.device(args.device), False, e.name)
            evaluate([model], cases, combinations(4), out, log=lambda *_: None)
            (out / "study_minutes.json").write_text(json.dumps({"minutes": (time.time() - t) / 60}))
        record = out / "study_minutes.json"
        evaluation_minutes += json.loads(record.read_text())["minutes"] if record.is_file() else math.nan
        result.per_case_dice[e.name], result.hd95[e.name] = per_case_metrics(out / "results.csv")
        result.cost[e.name] = chain_cost(job, step_ratio)
        result.minutes[e.name] = [jobs.minutes(job), jobs.chain_minutes(job)]
        result.iterations[e.name] = {j.trainer: j.iterations for j in job.chain().values()}
        result.loss_terms[e.name] = {j.trainer: loss_terms(jobs.folder(j)) for j in job.chain().values()
                                     if j.trainer != "AllStageMAETrainer"}
    # from each run's own record, so that a study finished over several --resume invocations reports its whole cost
    result.timing = {"training_min": round(training_minutes, 1), "evaluation_min": round(evaluation_minutes, 1)}
    return result, entries


# ------------------------------------------------------------------------------------------------ tables and plot
def _fmt(values, scale: float = 100) -> str:
    values = np.asarray(values, dtype=float) * scale
    return f"{values.mean():.1f}" + (f" ± {values.std(ddof=1):.1f}" if len(values) > 1 else "")


def paired(results: list[SeedResult], entry: str, reference: str) -> tuple[float, float, int, int]:
    """Per-case paired difference of ``entry`` to ``reference`` in Dice points (seed-averaged per case): mean,
    standard error over the cases, wins, cases."""
    cases = sorted(results[0].per_case_dice[reference])
    diffs = np.array([[r.per_case_dice[entry][c]["avg"] - r.per_case_dice[reference][c]["avg"] for c in cases]
                      for r in results]).mean(0) * 100
    se = diffs.std(ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    return float(diffs.mean()), float(se), int((diffs > 0).sum()), len(diffs)


def entry_table(names: list[str], labels: dict, results: list[SeedResult], regions: list[str],
                reference: str | None) -> str:
    """Mean Dice per region and on average (mean ± sd over seeds), the per-case paired difference to the reference
    entry (± s.e. over the test cases; wins), HD95, the chain's cost in stock iterations and its minutes."""
    n_cases = len(results[0].per_case_dice[names[0]])
    ref = f" vs {labels[reference]}" if reference else ""
    lines = ["| Model | iterations | " + " | ".join(f"Dice {r}" for r in regions) +
             f" | Dice avg | paired Δ{ref} (± s.e., n={n_cases}) | wins | HD95 avg (mm) | chain cost (stock it) | "
             f"train min (own / chain) |", "|---|---|" + "---|" * (len(regions) + 6)]
    for name in names:
        per_seed = dict.fromkeys(" / ".join(str(v) for v in r.iterations[name].values()) for r in results)
        cells = [labels[name], " or ".join(per_seed)]
        cases = sorted(results[0].per_case_dice[name])
        for region in regions + ["avg"]:
            cells.append(_fmt([np.mean([r.per_case_dice[name][c][region] for c in cases]) for r in results]))
        if reference and name != reference:
            mean, se, wins, n = paired(results, name, reference)
            cells += [f"{mean:+.1f} ± {se:.1f}", f"{wins}/{n}"]
        else:
            cells += ["–", "–"]
        cells.append(_fmt([r.hd95[name] for r in results], 1))
        cells.append(f"{np.mean([r.cost[name] for r in results]):.0f}")
        own = np.nanmean([r.minutes[name][0] for r in results])
        chain = np.nanmean([r.minutes[name][1] for r in results])
        cells.append(f"{own:.0f} / {chain:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def study_tables(entries: list[Entry], results: list[SeedResult], regions: list[str], reference_row: str) -> str:
    """One table per budget (reference: ``reference_row`` at that budget) and one for the splits (reference: MDrop
    at the same cost)."""
    labels = {e.name: f"{e.row.label}" + (" (checkpoint_best)" if e.checkpoint != "checkpoint_final.pth" else "")
              for e in entries}
    blocks = []
    schedules = list(dict.fromkeys(e.schedule for e in entries if e.section == "budget" and e.row is not MDROP))
    for schedule in schedules:
        names = [e.name for e in entries if e.section == "budget" and e.schedule == schedule]
        budget = schedule.default
        baselines = [e for e in entries if e.section == "budget" and e.row is MDROP
                     and 1 <= e.schedule.default / budget <= MOST_BASELINE_MULTIPLE_SHOWN]
        for e in baselines:
            labels[e.name] = f"{e.row.label}, {round(e.schedule.default / budget, 1):g}x ({e.schedule.default} it)"
        names += [e.name for e in baselines if e.name not in names]
        reference = f"{reference_row} @ {schedule.name}"
        blocks.append(f"**{schedule.name}**\n\n" + entry_table(names, labels, results, regions,
                                                               reference if reference in names else None))
    splits = [e for e in entries if e.section == "split"]
    if splits:
        for e in splits:
            labels[e.name] = (f"{e.row.label}, {e.schedule.name}" if e.row is not MDROP else
                              f"{e.row.label} at the same cost")
        reference = next(e.name for e in splits if e.row is MDROP)
        blocks.append("**the chain at a fixed total cost, split over stages 1-4**\n\n" +
                      entry_table([e.name for e in splits], labels, results, regions, reference))
    n_cases = len(results[0].per_case_dice[entries[0].name])
    return "\n\n".join(blocks) + (f"\n\n{len(results)} seed(s); Dice in %, mean over the 15 input combinations and "
                                   f"{n_cases} test cases; ± after a mean is the sd over seeds; the paired Δ is per "
                                   f"test case, seed-averaged, ± its standard error over the cases; iterations are "
                                   f"each run of the chain (stage 1 / 2 / 3 / 4 where it has them); chain cost in "
                                   f"stock nnU-Net iterations of the measured step costs.")


# the trainers whose own loss terms (Eq. 3's, Eq. 6's) the study reports, with the stage they are
TERM_STAGES = {"AllStageMAEDATrainer": "stage 3", "AllStageTrainer": "stage 4"}


def loss_term_lines(entries: list[Entry], results: list[SeedResult]) -> str:
    """Per seed and chain, the first and last epoch's mean of each loss term stages 3 and 4 log beside nnU-Net's
    own (L_rec and L_seg; L_task, L_data, L_KD and the gradient norms), read from each run's checkpoint."""
    lines = []
    for e in entries:
        if e.checkpoint != "checkpoint_final.pth":
            continue
        for r in results:
            parts = []
            for trainer, stage in TERM_STAGES.items():
                terms = {k.removeprefix("train_").removesuffix("_loss"): v
                         for k, v in r.loss_terms.get(e.name, {}).get(trainer, {}).items() if k != "train_losses" and v}
                if terms:
                    parts.append(f"{stage} " + ", ".join(f"{k} {v[0]:.3f} → {v[-1]:.3f}" for k, v in terms.items()))
            if parts:
                lines.append(f"- {e.name}, seed {r.seed}: " + "; ".join(parts))
    return ("Loss terms, first → last epoch (mean over each epoch's iterations):\n\n" + "\n".join(lines)) if lines \
        else ""


# beside a budget's rows, MDrop at 1x up to this many times that budget (the compute-matched range)
MOST_BASELINE_MULTIPLE_SHOWN = 8


def frontier_curves(entries: list[Entry], results: list[SeedResult]) -> tuple[dict, list]:
    """({label: [(cost, Dice, s.e.), ...] by cost} of every row through its budgets and of MDrop through all its
    iteration counts, the run at the chain's cost included; [(label, point, is_mdrop)] of the split section), with
    cost in stock nnU-Net iterations, Dice the mean of the seed-averaged per-case Dice and s.e. over the test cases."""
    def point(name: str) -> tuple[float, float, float]:
        cases = sorted(results[0].per_case_dice[name])
        per_case = np.array([[r.per_case_dice[name][c]["avg"] for c in cases] for r in results]).mean(0) * 100
        return (float(np.mean([r.cost[name] for r in results])), float(per_case.mean()),
                float(per_case.std(ddof=1) / np.sqrt(len(per_case))) if len(per_case) > 1 else 0.0)

    curves: dict = {}
    for e in entries:
        if e.section == "budget" or e.row is MDROP:
            key = e.row.label + (" (checkpoint_best)" if e.checkpoint != "checkpoint_final.pth" else "")
            curves.setdefault(key, set()).add(point(e.name))
    singles = [(e.schedule.name if e.row is not MDROP else f"{MDROP.label}, same cost as the splits", point(e.name),
                e.row is MDROP) for e in entries if e.section == "split"]
    return {k: sorted(v) for k, v in curves.items()}, singles


def frontier_plot(entries: list[Entry], results: list[SeedResult], path: Path, title: str) -> None:
    """x: the chain's cost in stock nnU-Net iterations (log), y: mean Dice; one line per row through its budgets,
    MDrop's curve through all its iteration counts, the splits as points; error bars: ± s.e. over the test cases
    of the seed-averaged per-case Dice."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    curves, singles = frontier_curves(entries, results)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for key, points in curves.items():
        x, y, err = zip(*points)
        style = dict(color="black", marker="s", linestyle="--") if key == MDROP.label else \
            dict(marker="o", linestyle=":" if key.endswith("(checkpoint_best)") else "-")
        ax.errorbar(x, y, yerr=err, capsize=3, label=key, **style)
    for label, (x, y, err), is_mdrop in singles:
        ax.errorbar([x], [y], yerr=[err], capsize=3, marker="D" if is_mdrop else "*", markersize=10,
                    linestyle="none", label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training cost of the whole chain (stock nnU-Net iterations)")
    ax.set_ylabel("Dice avg over WT/TC/ET and 15 combinations (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _link_cases(cases, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for case in cases:
        link = target / case.case_id
        if not link.exists():
            link.symlink_to(case.folder.resolve(), target_is_directory=True)


def _all_training(name: str, case_ids: list[str]) -> dict:
    return {"name": name, "train": case_ids, "val": [], "test": []}


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else \
        platform.processor()
    return f"{model}, {os.cpu_count()} cores, {platform.system()}"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=str(DEFAULT_SRC), help="BraTS training folder (any year)")
    parser.add_argument("--test-src", help="BraTS folder of test cases (default: the four split-3 test cases)")
    parser.add_argument("--ladder", choices=sorted(LADDERS), default="method")
    parser.add_argument("--rows", help="comma-separated row names (any ladder's; default: the ladder's rows; an empty "
                                       "value: none, e.g. with --chain-budget)")
    parser.add_argument("--budgets", default="128", help="comma-separated iterations per trainer, e.g. 128,512")
    parser.add_argument("--baseline-multiples", default="1,2,4,8",
                        help="nnU-Net + MDrop at these multiples of each budget")
    parser.add_argument("--baseline-iterations", help="nnU-Net + MDrop at these iterations instead (comma-separated)")
    parser.add_argument("--chain-budget", help="the chain's total cost for --splits in stock nnU-Net iterations, or "
                                               "'equal:B' for the cost of the chain with B iterations per stage; MDrop "
                                               "is trained at the same cost beside them")
    parser.add_argument("--splits", default="1:1:1:1",
                        help="comma-separated stage weights a:b:c:d (iterations of stages 1-4 in proportion)")
    parser.add_argument("--labelled-fraction", type=float,
                        help="keep the labels of this fraction of the training cases (convert-brats's option)")
    parser.add_argument("--also-best", action="store_true", help="also evaluate checkpoint_best.pth of every "
                                                                 "row that is not the baseline")
    parser.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds (FM draw and training)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST_SEED, FIRST_SEED+1, ...")
    parser.add_argument("--no-baselines", action="store_true", help="leave out nnU-Net + MDrop at the budgets")
    parser.add_argument("--reference", default="stage4", help="the row the paired differences at a budget go to")
    parser.add_argument("--workdir", default="study_output")
    parser.add_argument("--spacing", type=float, default=4.0, help="target spacing in mm (CPU-affordable)")
    parser.add_argument("--iterations", type=int, default=16, help="training iterations per epoch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fm-ratio", type=float, default=0.25)
    parser.add_argument("--resume", action="store_true", help="keep --workdir: finished runs and evaluations are "
                                                               "reused, an interrupted run continues")
    args = parser.parse_args(argv)
    try:
        args.budgets = [int(b) for b in args.budgets.split(",")]
        args.baseline_multiples = [int(k) for k in args.baseline_multiples.split(",") if k]
        if args.baseline_iterations is not None:
            args.baseline_iterations = [int(k) for k in args.baseline_iterations.split(",") if k]
        if args.chain_budget is not None and not args.chain_budget.startswith("equal:"):
            float(args.chain_budget)
        elif args.chain_budget is not None:
            int(args.chain_budget[6:])
    except ValueError:
        parser.error("--budgets, --baseline-multiples and --baseline-iterations take comma-separated whole numbers, "
                     "--chain-budget a number or equal:B")
    for option, values in (("--budgets", args.budgets), ("--baseline-iterations", args.baseline_iterations or [])):
        bad = [b for b in values if b <= 0 or b % args.iterations]
        if bad:  # a run trains whole epochs: its name and its cost would overstate what was trained
            parser.error(f"{option}: {bad[0]} is not a positive multiple of --iterations {args.iterations}")
    args.splits = [parse_split(s) for s in args.splits.split(",")] if args.chain_budget else []
    if args.labelled_fraction is not None and not 0 < args.labelled_fraction <= 1:
        parser.error("--labelled-fraction must lie in (0, 1]")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start = time.time()
    from nnunet_allstage.conversion.sources import brats_layout, detect_brats_year, discover_brats_cases
    from nnunet_allstage.environment import apply_default_env
    from nnunet_allstage.errors import AllStageError

    rows = select_rows(args.ladder, args.rows)
    if args.reference not in {r.name for r in rows}:
        args.reference = rows[-1].name if rows else ""
    workdir = Path(args.workdir).resolve()
    if not args.resume:
        shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    apply_default_env(workdir)
    os.environ.setdefault("nnUNet_compile", "f")
    os.environ.setdefault("NNUNET_ALLSTAGE_FINAL_VALIDATION", "0")  # fold 'all': it would predict every training case
    if not os.environ.get("NNUNET_ALLSTAGE_CLIP_WEIGHTS"):
        os.environ["NNUNET_ALLSTAGE_CLIP_PRETRAINED"] = "random-test-only"
    src = Path(args.src)
    if not src.is_dir():
        sys.exit(f"--src {src} not found (the BraTS 2018 sample lives in the project's shared/ folder)")
    train_cases = discover_brats_cases(src, brats_layout(detect_brats_year(src)))
    if args.test_src:
        test_root = Path(args.test_src)
        test_cases = discover_brats_cases(test_root, brats_layout(detect_brats_year(test_root)))
    else:
        test_cases = [c for c in train_cases if c.case_id in HELD_BACK]
    train_cases = [c for c in train_cases if c.case_id not in {t.case_id for t in test_cases}]
    if not train_cases:
        sys.exit(f"no training case left in {src} after removing the test cases")
    if not test_cases:
        sys.exit("no test case: pass --test-src with BraTS case folders that hold labels")
    test_source = workdir / "test_source"
    _link_cases(test_cases, test_source)
    print("=" * 100)
    print(f"Study: rows {[r.name for r in rows]}, budgets {args.budgets} it/trainer, {len(train_cases)} training and "
          f"{len(test_cases)} test BraTS cases, {args.seeds} seed(s), {args.spacing} mm")
    print("=" * 100)
    results, entries = [], []
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            result, entries = run_seed(seed, rows, train_cases, test_source, workdir / f"seed{seed}", args)
            results.append(result)
    except AllStageError as e:
        sys.exit(f"error: {e}")
    regions = [r for r in next(iter(results[0].per_case_dice.values()))[test_cases[0].case_id] if r != "avg"]
    total = round((time.time() - start) / 60, 1)
    command = "python scripts/studies/study_real.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    labelled = f", labelled fraction {args.labelled_fraction}" if args.labelled_fraction is not None else ""
    title = (f"{len(train_cases)} training / {len(test_cases)} test cases, {args.spacing} mm, FM {args.fm_ratio}"
             f"{labelled}, {len(results)} seed(s)")
    header = [f"### {date.today().isoformat()}: {', '.join(r.name for r in rows) or 'splits'} at "
              f"{', '.join(map(str, args.budgets))} it/trainer" + (f", splits at {args.chain_budget} stock it"
                                                                   if args.chain_budget else ""),
              "", f"- command: `{command}`", f"- machine: {machine()}; recorded minutes per seed "
              f"{', '.join(str(r.timing) for r in results)} (this invocation {total} min)",
              f"- data: {title}; test cases {', '.join(c.case_id for c in test_cases)}; seeds "
              f"{', '.join(str(r.seed) for r in results)}",
              "- step cost vs stock nnUNetTrainer (seed-averaged): " + ", ".join(
                  f"{t} {np.mean([r.step_ratio[t] for r in results]):.2f}" for t in results[0].step_ratio),
              "- CLIP: random weights (no CLIP download offline); the hyper-network's codes carry no language", ""]
    terms = loss_term_lines(entries, results)
    text = "\n".join(header) + "\n" + study_tables(entries, results, regions, args.reference) + "\n" + \
        (f"\n{terms}\n" if terms else "")
    (workdir / "study_results.md").write_text(text)
    (workdir / "study_summary.json").write_text(json.dumps(
        {"settings": {k: v for k, v in vars(args).items()}, "command": command, "machine": machine(),
         "entries": [{"name": e.name, "row": asdict(e.row), "schedule": asdict(e.schedule), "section": e.section,
                      "checkpoint": e.checkpoint} for e in entries],
         "seeds": [asdict(r) for r in results], "total_min": total}, indent=1, default=str))
    frontier_plot(entries, results, workdir / "frontier.png", title)
    print(text)
    print(f"written: {workdir / 'study_results.md'}, {workdir / 'study_summary.json'}, {workdir / 'frontier.png'}")


if __name__ == "__main__":
    main()
