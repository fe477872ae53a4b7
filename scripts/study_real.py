#!/usr/bin/env python
"""Real-data study on BraTS cases on the CPU: what each stage buys, against nnU-Net + modality dropout.

Converts the training cases at FM ratio 0.25, plans at a coarse target spacing CPU training can afford, trains
every row of a ladder on all training cases (nnU-Net fold `all`) with the same iteration budget per trainer
(stages shared between rows are trained once), and evaluates every row on the same test cases over the 15 input
combinations. Every ladder also gets nnU-Net + modality dropout at the same per-trainer budget and at the total
iterations of the four stages together (the compute-matched baseline: what the method's GPU-hours buy instead).

    python scripts/study_real.py                               # ladder 'method': baseline, stage 2, stage 4
    python scripts/study_real.py --ladder table4 --seeds 2     # the paper's Table 4, two seeds
    python scripts/study_real.py --ladder recipe --rows 0,1,2  # some rows of the recipe ladder
    python scripts/study_real.py --ladder table4 --rows 0,1,2,3,4,recipe:3   # a row of another ladder too
    python scripts/study_real.py --test-src /data/other_brats  # a test folder in any BraTS layout
    python scripts/study_real.py --ladder recipe --rows 0,10   # stage 2 twice: how far two runs of one recipe land
    python scripts/study_real.py --ladder recipe --rows 0,1 --no-baselines --first-seed 2   # more seeds, new FM draws

Without --test-src, the four cases of the 12-case BraTS 2018 sample that split 3 puts in its test set are held
back and the other eight train. Each seed converts its own simulated dataset (FM draw) and trains every row
again (nnU-Net's training is not seeded); the table gives mean +- sd over seeds and, per row, the per-case paired
difference to the first row with its standard error over the test cases. Outputs: study_summary.json,
study_table.md and every evaluation under --workdir.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from nnunet_allstage.training import trainer_class  # noqa: E402

DEFAULT_SRC = REPO.parent / "shared" / "data" / "brats2018_sample" / "MICCAI_BraTS_2018_Data_Training"
HELD_BACK = ("Brats18_2013_3_1", "Brats18_CBICA_AME_1", "Brats18_TCIA01_425_1", "Brats18_TCIA10_637_1")
STUDY_DATASET_ID = 902
STUDY_TEST_DATASET_ID = 903
FOUR_STAGES = 4  # the compute-matched baseline trains this many trainers' worth of iterations


@dataclass
class Row:
    label: str
    trainer: str
    options: dict = field(default_factory=dict)  # NNUNET_ALLSTAGE_* options of this row
    budget: int = 1  # multiple of the per-trainer iteration budget
    # > 0: another training run of the row's own trainer (its predecessors shared), to measure training noise: the
    # paired difference between two runs of one recipe is what a single comparison can show by chance
    rerun: int = 0


BASELINES = [Row("nnU-Net + MDrop (same budget per trainer)", "AllStageDropoutTrainer"),
             Row("nnU-Net + MDrop (compute-matched: 4 trainers' iterations)", "AllStageDropoutTrainer",
                 budget=FOUR_STAGES)]
LADDERS = {
    "method": [Row("stage 2: hyper-network (the teacher)", "AllStageHyperTrainer"),
               Row("stage 4: co-distillation (deployed)", "AllStageTrainer")],
    "table4": [Row("MAE baseline", "AllStageMAEFinetuneTrainer"),
               Row("+ distribution approximation", "AllStageDAFinetuneTrainer"),
               Row("+ CLIP-driven hyper-network", "AllStageDAHyperTrainer"),
               Row("+ co-distillation (full method)", "AllStageTrainer"),
               Row("stage 2 alone (hyper-network from stage 1)", "AllStageHyperTrainer")],
    "table5": [Row("(a) DA baseline, static head", "AllStageDAFinetuneTrainer_Binary"),
               Row("(b) KD from the hyper-teacher, no recovery", "AllStageTrainer_ModelDistNoMAE_Binary"),
               Row("(c) KD + frozen g's fill-ins", "AllStageTrainer_NoDataRefinement_Binary"),
               Row("(d) co-distillation, teacher without hyper-network", "AllStageTrainer_NoHyperTeacher_Binary"),
               Row("(e) co-distillation, binary-code hyper-teacher", "AllStageTrainer_Binary")],
    "fig5": [Row("DA baseline, static head", "AllStageDAFinetuneTrainer"),
             Row("hyper-network, binary codes", "AllStageDAHyperTrainer_Binary"),
             Row("hyper-network, CLIP embeddings", "AllStageDAHyperTrainer")],
    "recipe": [Row("stage 2 (reference)", "AllStageHyperTrainer"),
               Row("stage 4, METHOD.md recipe", "AllStageTrainer"),
               Row("stage 4, g at 0.03x the student's lr", "AllStageTrainer", {"recovery_lr_scale": "0.03"}),
               Row("stage 4, student from stage 2", "AllStageTrainer", {"student_init": "stage2"}),
               Row("stage 4, g sees masked input", "AllStageTrainer", {"recovery_input": "masked"}),
               Row("stage 2, nnU-Net's optimiser (SGD 1e-2, poly)", "AllStageHyperTrainer",
                   {"segmentation_optimizer": "nnunet"}),
               Row("stage 4, nnU-Net's optimiser in stages 2 and 4", "AllStageTrainer",
                   {"segmentation_optimizer": "nnunet"}),
               Row("stage 2, MDrop keeps the full set with p = 0.5", "AllStageHyperTrainer",
                   {"full_set_probability": "0.5"}),
               Row("stage 4, MDrop keeps the full set with p = 0.5", "AllStageTrainer",
                   {"full_set_probability": "0.5"}),
               Row("stage 4, student from stage 2, nnU-Net's optimiser in stages 2 and 4", "AllStageTrainer",
                   {"student_init": "stage2", "segmentation_optimizer": "nnunet"}),
               Row("stage 2 again: a second training run of the same recipe (training noise)", "AllStageHyperTrainer",
                   rerun=1),
               Row("stage 4 again: a second training run of the same recipe (training noise)", "AllStageTrainer",
                   rerun=1)],
}


def select_rows(ladder: str, spec: str | None) -> list[Row]:
    """The rows named by --rows: N is row N of the ladder, OTHER:N row N of ladder OTHER (rows run once each)."""
    if not spec:
        return list(LADDERS[ladder])
    rows = []
    for item in spec.split(","):
        name, _, index = item.strip().rpartition(":")
        name = name or ladder
        if name not in LADDERS or not index.isdigit() or int(index) >= len(LADDERS[name]):
            sys.exit(f"--rows: {item!r} names no row (ladders: {', '.join(f'{k} 0-{len(v) - 1}' for k, v in LADDERS.items())})")
        row = LADDERS[name][int(index)]
        if row not in rows:
            rows.append(row)
    return rows


def config_with(options: dict):
    """The options as a trainer run with these NNUNET_ALLSTAGE_* settings reads them."""
    from nnunet_allstage.config import load_config
    saved = dict(os.environ)
    os.environ.update({f"NNUNET_ALLSTAGE_{k.upper()}": v for k, v in options.items()})
    try:
        return load_config()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def job_key(trainer: str, options: dict, budget: int, rerun: int = 0) -> str:
    """Identity of one training run: the trainer, the options that matter to it and its predecessors, the budget,
    and which run of them it is (predecessors are always the first run)."""
    cls = trainer_class(trainer)
    relevant = {k: v for k, v in options.items() if k in cls.options_that_matter()}
    parts = [trainer, json.dumps(relevant, sort_keys=True), str(budget)] + ([f"rerun{rerun}"] if rerun else [])
    parts += [job_key(p, options, 1) for p in cls.predecessor_names(config_with(options))]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:10]


class Jobs:
    """Trains each distinct run once, in its own nnUNet_results with links to its predecessors' folders."""

    def __init__(self, root: Path, dataset: str, plans: str, args, base_env: dict):
        self.root, self.dataset, self.plans, self.args, self.base_env = root, dataset, plans, args, base_env
        self.minutes: dict[str, float] = {}

    def folder(self, trainer: str, options: dict, budget: int, rerun: int = 0) -> Path:
        key = job_key(trainer, options, budget, rerun)
        return self.root / key / self.dataset / f"{trainer}__{self.plans}__3d_fullres"

    def train(self, trainer: str, options: dict, budget: int = 1, rerun: int = 0) -> Path:
        from nnunet_allstage.pipeline import run_training, train_command
        folder = self.folder(trainer, options, budget, rerun)
        if (folder / "fold_all" / "checkpoint_final.pth").is_file():
            return folder
        env = {**self.base_env, **{f"NNUNET_ALLSTAGE_{k.upper()}": v for k, v in options.items()},
               "NNUNET_ALLSTAGE_NUM_EPOCHS": str(self.args.epochs * budget),
               "nnUNet_results": str(folder.parents[1])}
        for predecessor in trainer_class(trainer).predecessor_names(config_with(options)):
            source = self.train(predecessor, options)
            link = folder.parent / source.name
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(source, target_is_directory=True)
        folder.parent.mkdir(parents=True, exist_ok=True)
        t = time.time()
        run_training(train_command(STUDY_DATASET_ID, "all", trainer, plans=self.plans, device=self.args.device),
                     f"{trainer} {options or ''} x{budget}" + (f" run {rerun + 1}" if rerun else ""), env)
        self.minutes[str(folder)] = (time.time() - t) / 60
        return folder

    def chain_minutes(self, trainer: str, options: dict, budget: int = 1, rerun: int = 0) -> float:
        """Training minutes of the run and of every run it starts from, each counted once (stage 4's teacher is
        also stage 3's, and with student_init=stage2 its student's start)."""
        return sum(self.minutes.get(f, float("nan")) for f in self.chain_folders(trainer, options, budget, rerun))

    def chain_folders(self, trainer: str, options: dict, budget: int = 1, rerun: int = 0) -> set[str]:
        folders = {str(self.folder(trainer, options, budget, rerun))}
        for predecessor in trainer_class(trainer).predecessor_names(config_with(options)):
            folders |= self.chain_folders(predecessor, options)
        return folders


def per_case_dice(results_csv: Path) -> dict:
    """{model: {case: {region: mean Dice over combinations, 'avg': mean over regions}}} from results.csv."""
    table: dict = {}
    for r in csv.DictReader(open(results_csv)):
        table.setdefault(r["model"], {}).setdefault(r["case"], {}).setdefault(r["region"], []).append(float(r["dice"]))
    out = {}
    for model, cases in table.items():
        out[model] = {}
        for case, regions in cases.items():
            means = {region: float(np.mean(v)) for region, v in regions.items()}
            means["avg"] = float(np.mean(list(means.values())))
            out[model][case] = means
    return out


def _fmt(values: list[float], scale: float = 100) -> str:
    values = np.asarray(values, dtype=float) * scale
    return f"{values.mean():.1f}" + (f" ± {values.std(ddof=1):.1f}" if len(values) > 1 else "")


def ladder_table(rows: list[Row], per_seed: list[dict], hd95_per_seed: list[dict], minutes: list[dict],
                 regions: list[str], reference: int = 0) -> str:
    """The Table-4-shaped table: mean Dice per region and on average (mean ± sd over seeds), delta to the
    reference row (the first by default), per-case paired difference to it (mean ± s.e. over test cases,
    seed-averaged; wins), HD95 average, training minutes of the row's own trainer and of its whole chain."""
    first = rows[reference].label
    n_seeds = len(per_seed)
    cases = sorted(per_seed[0][first])
    lines = ["| Row | " + " | ".join(f"Dice {r}" for r in regions) + f" | Dice avg | Δ avg vs row {reference + 1} | "
             f"paired Δ per case (± s.e., n={len(cases)}) | wins | HD95 avg (mm) | train min (own / chain) |",
             "|---|" + "---|" * (len(regions) + 6)]
    for row in rows:
        cells = [row.label]
        for region in regions + ["avg"]:
            cells.append(_fmt([float(np.mean([s[row.label][c][region] for c in cases])) for s in per_seed]))
        diffs = np.array([[s[row.label][c]["avg"] - s[first][c]["avg"] for c in cases] for s in per_seed])
        per_case = diffs.mean(0) * 100
        cells.append(f"{per_case.mean():+.1f}" if row.label != first else "–")
        se = per_case.std(ddof=1) / np.sqrt(len(per_case)) if len(per_case) > 1 else float("nan")
        cells.append(f"{per_case.mean():+.1f} ± {se:.1f}" if row.label != first else "–")
        cells.append(f"{int((per_case > 0).sum())}/{len(per_case)}" if row.label != first else "–")
        cells.append(_fmt([h[row.label] for h in hd95_per_seed], 1))
        own = np.nanmean([m[row.label][0] for m in minutes])
        chain = np.nanmean([m[row.label][1] for m in minutes])
        cells.append(f"{own:.0f} / {chain:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{n_seeds} seed(s); Dice in %, mean over the 15 input combinations and the test cases."


def reprint_table(summary_file: Path, reference: int) -> None:
    if not summary_file.is_file():
        sys.exit(f"--table-from: {summary_file} not found (a study writes study_summary.json into --workdir)")
    summary = json.loads(summary_file.read_text())
    rows = [Row(**r) for r in summary["settings"]["rows"]]
    if not 0 <= reference < len(rows):
        sys.exit(f"--reference must be 1..{len(rows)}")
    minutes = [{label: tuple(v) for label, v in m.items()} for m in summary["train_minutes"]]
    print(ladder_table(rows, summary["per_case_dice"], summary["hd95_avg"], minutes,
                       summary["evaluation"][0]["regions"], reference))


def _link_cases(cases, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for case in cases:
        (target / case.case_id).symlink_to(case.folder.resolve(), target_is_directory=True)


def _all_training(name: str, case_ids: list[str]) -> dict:
    return {"name": name, "train": case_ids, "val": [], "test": []}


def run_seed(seed: int, rows: list[Row], train_cases, test_root: Path, workdir: Path, args) -> tuple:
    """Convert, plan, train and evaluate one seed; with --resume, a seed already evaluated for the same rows and
    settings is read back from its seed_result.json."""
    saved = workdir / "seed_result.json"
    fingerprint = {"rows": [row.__dict__ for row in rows], "spacing": args.spacing, "epochs": args.epochs,
                   "iterations": args.iterations, "fm_ratio": args.fm_ratio}
    if args.resume and saved.is_file():
        result = rows_of_saved_seed(json.loads(saved.read_text()), fingerprint)
        if result is not None:
            print(f"seed {seed}: evaluated before, read from {saved}")
            return result
    shutil.rmtree(workdir, ignore_errors=True)
    result = _run_seed(seed, rows, train_cases, test_root, workdir, args)
    saved.write_text(json.dumps({"fingerprint": fingerprint, "result": result}))
    return result


def rows_of_saved_seed(saved: dict, fingerprint: dict) -> tuple | None:
    """A saved seed's result for these rows, or None. A seed evaluated with more rows serves any subset of them:
    rows are the same run when trainer, options, budget and run agree, whatever they were labelled."""
    if {k: v for k, v in saved["fingerprint"].items() if k != "rows"} != \
            {k: v for k, v in fingerprint.items() if k != "rows"}:
        return None

    def run_of(row: dict) -> tuple:
        return row["trainer"], json.dumps(row["options"], sort_keys=True), row["budget"], row.get("rerun", 0)

    saved_label = {}
    for row in saved["fingerprint"]["rows"]:
        saved_label.setdefault(run_of(row), row["label"])
    try:
        labels = {row["label"]: saved_label[run_of(row)] for row in fingerprint["rows"]}
    except KeyError:
        return None
    dice, hd95, minutes, summary, times = saved["result"]
    summary = {**summary, "models": {new: summary["models"][old] for new, old in labels.items()}}
    return ({new: dice[old] for new, old in labels.items()}, {new: hd95[old] for new, old in labels.items()},
            {new: minutes[old] for new, old in labels.items()}, summary, times)


def _run_seed(seed: int, rows: list[Row], train_cases, test_root: Path, workdir: Path, args) -> tuple:
    from nnunet_allstage.conversion import convert_brats
    from nnunet_allstage.planning import plan_dataset
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(workdir / name)
    train_source = workdir / "train_source"
    _link_cases(train_cases, train_source)
    train_raw = convert_brats(train_source, dataset_id=STUDY_DATASET_ID, name="BraTSStudy",
                              split=_all_training("study-train", [c.case_id for c in train_cases]),
                              fm_ratio=args.fm_ratio, seed=seed, num_processes=2)
    # the test cases form their own dataset, converted with their own year's layout and label values and kept
    # complete (no FM simulation): evaluation drops the sequences of each combination itself
    test_raw = convert_brats(test_root, dataset_id=STUDY_TEST_DATASET_ID, name="BraTSStudyTest",
                             split=_all_training("study-test", sorted(p.name for p in test_root.iterdir())),
                             num_processes=2)
    plans = plan_dataset(STUDY_DATASET_ID, target_spacing=[args.spacing] * 3, num_processes=2)
    base_env = {"NNUNET_ALLSTAGE_ITERATIONS_PER_EPOCH": str(args.iterations),
                "NNUNET_ALLSTAGE_VAL_ITERATIONS_PER_EPOCH": "2",
                "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "1")}
    jobs = Jobs(workdir / "runs", train_raw.name, plans, args, base_env)
    t = time.time()
    folders = {row.label: jobs.train(row.trainer, row.options, row.budget, row.rerun) for row in rows}
    training_minutes = (time.time() - t) / 60

    import torch
    from nnunet_allstage.evaluation import evaluate, find_test_cases, load_model
    from nnunet_allstage.modalities import combinations
    models = [load_model(folders[row.label], "all", "checkpoint_final.pth", torch.device(args.device), False,
                         row.label) for row in rows]
    cases = find_test_cases(test_raw / "imagesTr", test_raw / "labelsTr", ".nii.gz", 4)
    t = time.time()
    summary = evaluate(models, cases, combinations(4), workdir / "evaluation")
    minutes = {row.label: (jobs.minutes.get(str(folders[row.label]), float("nan")),
                           jobs.chain_minutes(row.trainer, row.options, row.budget, row.rerun)) for row in rows}
    return (per_case_dice(workdir / "evaluation" / "results.csv"),
            {m: summary["models"][m]["average"]["mean_hd95"] for m in summary["models"]}, minutes, summary,
            {"training_min": round(training_minutes, 1), "evaluation_min": round((time.time() - t) / 60, 1)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=str(DEFAULT_SRC), help="BraTS training folder (any year)")
    parser.add_argument("--test-src", help="BraTS folder of test cases (default: the four split-3 test cases)")
    parser.add_argument("--ladder", choices=sorted(LADDERS), default="method")
    parser.add_argument("--rows", help="comma-separated row numbers of the ladder (0-based; default: all); "
                                       "LADDER:N takes row N of another ladder, e.g. --rows 0,1,2,3,4,recipe:3")
    parser.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds (FM draw and training)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds are FIRST_SEED, FIRST_SEED+1, ...: new FM draws beside a study that ran the "
                             "first ones")
    parser.add_argument("--no-baselines", action="store_true",
                        help="leave out the two nnU-Net + MDrop rows (only for more runs of rows whose baselines were "
                             "measured before: every ladder's table needs them)")
    parser.add_argument("--workdir", default="study_output")
    parser.add_argument("--spacing", type=float, default=4.0, help="target spacing in mm (CPU-affordable)")
    parser.add_argument("--epochs", type=int, default=8, help="epochs per trainer")
    parser.add_argument("--iterations", type=int, default=16, help="training iterations per epoch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fm-ratio", type=float, default=0.25)
    parser.add_argument("--resume", action="store_true", help="keep --workdir and reuse the seeds already evaluated "
                                                               "with the same settings and these rows or more (add "
                                                               "seeds later, or study fewer rows over more seeds)")
    parser.add_argument("--table-from", metavar="STUDY_SUMMARY_JSON",
                        help="print the table of a finished study again (no training), e.g. with --reference")
    parser.add_argument("--reference", type=int, default=1, help="the row (1-based) the differences are taken to")
    args = parser.parse_args()
    if args.table_from:
        return reprint_table(Path(args.table_from), args.reference - 1)
    start = time.time()

    from nnunet_allstage.conversion.sources import brats_layout, detect_brats_year, discover_brats_cases
    from nnunet_allstage.environment import apply_default_env
    from nnunet_allstage.errors import AllStageError

    rows = select_rows(args.ladder, args.rows) + ([] if args.no_baselines else BASELINES)
    workdir = Path(args.workdir).resolve()
    if not args.resume:
        shutil.rmtree(workdir, ignore_errors=True)
    apply_default_env(workdir)
    os.environ.setdefault("nnUNet_compile", "f")
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
    shutil.rmtree(test_source, ignore_errors=True)
    _link_cases(test_cases, test_source)
    print("=" * 100)
    print(f"Study '{args.ladder}': {len(rows)} rows, {len(train_cases)} training and {len(test_cases)} test BraTS "
          f"cases, {args.seeds} seed(s), planned at {args.spacing} mm (coarse, for CPU training), {args.epochs} "
          f"epochs x {args.iterations} iterations per trainer.")
    print("=" * 100)
    results = []
    try:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            results.append(run_seed(seed, rows, train_cases, test_source, workdir / f"seed{seed}", args))
    except AllStageError as e:
        sys.exit(f"error: {e}")
    regions = results[0][3]["regions"]
    table = ladder_table(rows, [r[0] for r in results], [r[1] for r in results], [r[2] for r in results], regions,
                         args.reference - 1)
    total = round((time.time() - start) / 60, 1)
    settings = {"ladder": args.ladder, "rows": [row.__dict__ for row in rows], "seeds": args.seeds,
                "first_seed": args.first_seed,
                "spacing_mm": args.spacing, "epochs": args.epochs, "iterations_per_epoch": args.iterations,
                "fm_ratio": args.fm_ratio, "device": args.device, "cpu_cores": os.cpu_count(),
                "train_cases": [c.case_id for c in train_cases], "test_cases": [c.case_id for c in test_cases],
                "total_min": total, "per_seed_time": [r[4] for r in results]}
    (workdir / "study_summary.json").write_text(json.dumps(
        {"settings": settings, "per_case_dice": [r[0] for r in results], "hd95_avg": [r[1] for r in results],
         "train_minutes": [r[2] for r in results], "evaluation": [r[3] for r in results]}, indent=1))
    header = (f"Ladder '{args.ladder}', {len(train_cases)} training / {len(test_cases)} test cases, {args.spacing} mm, "
              f"{args.epochs}x{args.iterations} iterations per trainer, FM ratio {args.fm_ratio}, {args.seeds} seed(s), "
              f"{os.cpu_count()} CPU core(s), total {total} min")
    (workdir / "study_table.md").write_text(header + "\n\n" + table + "\n")
    print(header)
    print(table)
    print(f"CAVEAT: {len(train_cases)} training cases at {args.spacing} mm and a short schedule; read the per-case "
          f"paired differences and their standard errors, not the means alone.")


if __name__ == "__main__":
    main()
