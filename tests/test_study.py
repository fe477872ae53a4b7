"""scripts/studies/study_real.py without training: rows by name, shared runs, budgets and splits, costs, the tables'
paired statistics (values worked out by hand)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "studies"))
import study_real  # noqa: E402

RATIO = {"nnUNetTrainer": 1.0, "AllStageDropoutTrainer": 1.0, "AllStageMAETrainer": 1.0,
         "AllStageHyperTrainer": 1.0, "AllStageMAEDATrainer": 2.0, "AllStageTrainer": 3.0}


def test_rows_by_name_and_bad_names():
    rows = study_real.select_rows("table4", "stage4,stage2,stage4-from-stage2,stage4-from-stage2")
    assert [r.label for r in rows] == ["stage 4: co-distillation (deployed)", "stage 2: hyper-network (the teacher)",
                                       "stage 4, student from stage 2"]
    assert rows[2].option_dict == {"student_init": "stage2"}
    assert [r.name for r in study_real.select_rows("method", None)] == ["stage2", "stage4"]
    assert study_real.select_rows("method", "") == []
    with pytest.raises(SystemExit, match="no row named 'stage9'"):
        study_real.select_rows("table4", "stage9")


def job(trainer, options=None, iterations=128, rerun=0, **per_trainer):
    schedule = study_real.Schedule("s", iterations, tuple(per_trainer.items()))
    return study_real.make_job(trainer, options or {}, schedule, rerun)


def test_runs_are_shared_exactly_where_the_options_and_iterations_do_not_matter():
    # g's learning rate matters to stage 4 only: its stages 1-3 are the default row's
    slow_g = job("AllStageTrainer", {"recovery_lr_scale": "0.03"})
    default = job("AllStageTrainer")
    assert slow_g.key != default.key
    assert [p.key for p in slow_g.predecessors] == [p.key for p in default.predecessors]
    # the optimiser changes stage 2, hence every stage 4 built on it; the MAE has its own
    assert job("AllStageHyperTrainer", {"segmentation_optimizer": "nnunet"}).key != job("AllStageHyperTrainer").key
    assert job("AllStageMAETrainer", {"segmentation_optimizer": "nnunet"}).key == job("AllStageMAETrainer").key
    # a default spelt out is the default
    assert job("AllStageHyperTrainer", {"segmentation_optimizer": "paper"}).key == job("AllStageHyperTrainer").key
    # iterations are part of a run; a second run of a row is a run of its own on the first runs' predecessors
    assert job("AllStageDropoutTrainer", iterations=512).key != job("AllStageDropoutTrainer").key
    again = job("AllStageTrainer", rerun=1)
    assert again.key != default.key and again.predecessors == default.predecessors
    # a split changes the stage it names and everything built on it, nothing before it
    split = job("AllStageTrainer", AllStageMAEDATrainer=64)
    stages = {j.trainer: j for j in split.chain().values()}
    reference = {j.trainer: j for j in default.chain().values()}
    assert stages["AllStageMAETrainer"] == reference["AllStageMAETrainer"]
    assert stages["AllStageHyperTrainer"] == reference["AllStageHyperTrainer"]
    assert stages["AllStageMAEDATrainer"].iterations == 64 and split.key != default.key


def test_chain_cost_counts_each_run_once_in_training_order():
    chain = job("AllStageTrainer").chain()
    # stage 1 under stages 2 and 3, stage 2 as teacher and as stage 3's teacher: four runs, predecessors first
    assert [j.trainer for j in chain.values()] == ["AllStageMAETrainer", "AllStageHyperTrainer",
                                                   "AllStageMAEDATrainer", "AllStageTrainer"]
    # 128 * (1 + 1 + 2 + 3) stock iterations
    assert study_real.chain_cost(job("AllStageTrainer"), RATIO) == 896
    # with the student from stage 2 the chain is still those four runs
    assert study_real.chain_cost(job("AllStageTrainer", {"student_init": "stage2"}), RATIO) == 896


def test_split_schedule_meets_the_budget_in_whole_epochs():
    # weights 1:1:0.5:2 at 1120 stock iterations: unit = 1120 / (1 + 1 + 0.5*2 + 2*3) = 124.4 iterations; in epochs
    # of 16: 124.4/16 = 7.8 -> 8, 8, 3.9 -> 4, 15.6 -> 16
    schedule = study_real.split_schedule((1, 1, 0.5, 2), 1120, RATIO, 16)
    assert [schedule.iterations(t) for t in study_real.CHAIN] == [128, 128, 64, 256]
    assert study_real.chain_budget("equal:128", RATIO) == 896 and study_real.chain_budget("900", RATIO) == 900.0
    with pytest.raises(SystemExit, match="4 positive weights"):
        study_real.parse_split("1:1:1")


def test_step_costs_measured_beside_other_work_are_refused():
    # rounds of the study's step benchmark on one machine (s/it): alone, then beside a test run
    alone = {"nnUNetTrainer": [1.083, 1.185], "AllStageMAEDATrainer": [1.957, 1.899], "AllStageTrainer": [3.062, 3.157]}
    beside_tests = {"nnUNetTrainer": [4.350, 1.204], "AllStageMAEDATrainer": [6.280, 10.052],
                    "AllStageTrainer": [12.244, 9.545]}
    assert study_real.disagreeing_rounds({n: {"rounds_s": r} for n, r in alone.items()}) == ""
    busy = study_real.disagreeing_rounds({n: {"rounds_s": r} for n, r in beside_tests.items()})
    assert busy == "nnUNetTrainer 3.6x, AllStageMAEDATrainer 1.6x, AllStageTrainer 1.3x"


def test_entries_of_a_frontier_study():
    args = study_real.parse_args(["--budgets", "128,512", "--baseline-multiples", "1,4", "--chain-budget", "equal:128",
                                  "--splits", "1:1:1:1,1:1:0.5:2", "--also-best"])
    entries = study_real.entries_of(study_real.select_rows("method", None), args, RATIO)
    names = [e.name for e in entries]
    assert names[:4] == ["stage2 @ 128 it/trainer", "stage2 @ 128 it/trainer (checkpoint_best)",
                         "stage4 @ 128 it/trainer", "stage4 @ 128 it/trainer (checkpoint_best)"]
    # MDrop at 1x and 4x of each budget: 128, 512 (shared by 4x128 and 1x512), 2048
    assert [e.schedule.default for e in entries if e.row is study_real.MDROP and e.section == "budget"] == \
        [128, 512, 2048]
    # the equal split at 128 is the budget's own chain; MDrop beside the splits at the same cost, in whole epochs
    splits = [e for e in entries if e.section == "split"]
    assert splits[0].schedule.iterations("AllStageTrainer") == 128
    assert splits[-1].row is study_real.MDROP and splits[-1].schedule.default == 896
    # another seed measures other step costs, hence other iterations, under the same name: its tables can join
    slower = study_real.entries_of(study_real.select_rows("method", None), args, {**RATIO, "AllStageTrainer": 3.5})
    assert slower[-1].schedule.default == 960 and slower[-1].name == splits[-1].name
    for whole_epochs_only in (["--budgets", "100"], ["--budgets", "128", "--baseline-iterations", "832,3500"]):
        with pytest.raises(SystemExit):  # 100 and 3500 are not whole epochs of 16
            study_real.parse_args(whole_epochs_only)


def seed_result(seed, dice_by_entry):
    """A SeedResult whose per-case average Dice is given; every region equal to it."""
    r = study_real.SeedResult(seed, {}, {}, {}, {}, {}, {}, RATIO, {})
    for name, per_case in dice_by_entry.items():
        r.per_case_dice[name] = {c: {"WT": v, "TC": v, "ET": v, "avg": v} for c, v in per_case.items()}
        r.hd95[name], r.cost[name], r.minutes[name], r.iterations[name] = 20.0, 100.0, [1.0, 3.0], {"A": 128}
    return r


def test_paired_differences_by_hand():
    a = {"c1": 0.50, "c2": 0.40, "c3": 0.60}
    b = {"c1": 0.55, "c2": 0.38, "c3": 0.70}  # paired differences +5, -2, +10 Dice points
    results = [seed_result(0, {"A": a, "B": b})]
    mean, se, wins, n = study_real.paired(results, "B", "A")
    # mean 13/3 = 4.333; sd of (5, -2, 10) = sqrt(((0.667)^2 + (6.333)^2 + (5.667)^2) / 2) = 6.028; s.e. 3.480
    assert mean == pytest.approx(4.3333, abs=1e-3) and se == pytest.approx(3.4801, abs=1e-3) and (wins, n) == (2, 3)
    # two seeds: the per-case differences are averaged over seeds first ((5+1)/2, (-2+0)/2, (10+4)/2 = 3, -1, 7)
    b2 = {"c1": 0.51, "c2": 0.40, "c3": 0.64}
    results.append(seed_result(1, {"A": a, "B": b2}))
    mean, se, wins, n = study_real.paired(results, "B", "A")
    assert mean == pytest.approx(3.0) and se == pytest.approx(np.sqrt(16 / 3)) and wins == 2
    table = study_real.entry_table(["A", "B"], {"A": "row A", "B": "row B"}, results, ["WT"], "A")
    row_b = next(line for line in table.splitlines() if line.startswith("| row B |"))
    # Dice avg per seed 54.3 and 51.7 -> mean 53.0, sd 1.9 (of 54.33 and 51.67)
    assert "| 53.0 ± 1.9 |" in row_b and "| +3.0 ± 2.3 |" in row_b and "| 2/3 |" in row_b and "| 1 / 3 |" in row_b
    header, rule = table.splitlines()[:2]
    assert header.count("|") == rule.count("|")


def test_each_budget_table_shows_mdrop_from_one_to_eight_times_its_budget():
    args = study_real.parse_args(["--budgets", "128,512", "--baseline-iterations", "128,768,832,1536"])
    entries = study_real.entries_of(study_real.select_rows("method", None), args, RATIO)
    per_case = {"c1": 0.5, "c2": 0.4}
    results = [seed_result(0, {e.name: per_case for e in entries})]
    tables = study_real.study_tables(entries, results, ["WT"], "stage4").split("**512 it/trainer**")
    # beside 128: 1x, 6x and 6.5x (832 = the chain's cost, not a whole multiple); 1536 = 12 x 128 is beyond 8x
    assert "MDrop, 1x (128 it)" in tables[0] and "MDrop, 6x (768 it)" in tables[0] and "1536" not in tables[0]
    assert "MDrop, 6.5x (832 it)" in tables[0]
    # beside 512: 1.5x, 1.6x (832 / 512 = 1.625) and 3x; 128 is below 1x
    assert "MDrop, 1.5x (768 it)" in tables[1] and "MDrop, 1.6x (832 it)" in tables[1]
    assert "MDrop, 3x (1536 it)" in tables[1] and "(128 it)" not in tables[1]


def test_two_seeds_with_different_cost_matched_iterations_make_one_split_table():
    args = study_real.parse_args(["--rows", "", "--no-baselines", "--budgets", "128", "--chain-budget", "equal:128",
                                  "--splits", "1:1:1:1"])
    per_seed = [study_real.entries_of([], args, {**RATIO, "AllStageTrainer": ratio}) for ratio in (3.0, 3.5)]
    results = []
    for seed, entries in enumerate(per_seed):
        r = seed_result(seed, {e.name: {"c1": 0.5 + seed / 10, "c2": 0.4} for e in entries})
        r.iterations = {e.name: {t: e.schedule.iterations(t) for t in study_real.CHAIN[-1:]} for e in entries}
        results.append(r)
    table = study_real.study_tables(per_seed[-1], results, ["WT"], "")
    mdrop = next(line for line in table.splitlines() if line.startswith("| nnU-Net + MDrop at the same cost |"))
    # 896 and 960 stock iterations at the stock step cost of 1, in whole epochs of 16
    assert "| 896 or 960 |" in mdrop


def test_frontier_curves_join_mdrop_at_the_chains_cost_to_its_curve(tmp_path):
    args = study_real.parse_args(["--budgets", "128,512", "--baseline-iterations", "128,832", "--chain-budget",
                                  "equal:512", "--splits", "1:1:1:1", "--also-best"])
    entries = study_real.entries_of(study_real.select_rows("method", None), args, RATIO)
    results = [seed_result(0, {e.name: {"c1": 0.5, "c2": 0.3} for e in entries})]
    for e in entries:
        results[0].cost[e.name] = study_real.chain_cost(study_real.make_job(e.row.trainer, e.row.option_dict,
                                                                             e.schedule), RATIO)
    curves, singles = study_real.frontier_curves(entries, results)
    # MDrop through 128, 832 and the chain's cost at 512 it/trainer (512 * 7 = 3584 stock it)
    assert [x for x, _, _ in curves[study_real.MDROP.label]] == [128, 832, 3584]
    # each row through its two budgets; Dice 40 +- s.e. 10 (per case 50 and 30)
    assert curves["stage 4: co-distillation (deployed)"] == [(896, 40.0, 10.0), (3584, 40.0, 10.0)]
    assert len(curves["stage 2: hyper-network (the teacher) (checkpoint_best)"]) == 2
    assert [(label, mdrop) for label, _, mdrop in singles] == \
        [("split 1:1:1:1", False), ("nnU-Net + MDrop, same cost as the splits", True)]
    study_real.frontier_plot(entries, results, tmp_path / "frontier.png", "test")
    assert (tmp_path / "frontier.png").stat().st_size > 10_000


def test_loss_term_lines_give_first_and_last_epoch_of_stages_3_and_4():
    args = study_real.parse_args(["--budgets", "512", "--no-baselines", "--also-best"])
    entries = study_real.entries_of(study_real.select_rows("method", None), args, RATIO)
    results = [seed_result(0, {e.name: {"c1": 0.5} for e in entries})]
    results[0].loss_terms = {e.name: {} for e in entries}
    results[0].loss_terms["stage4 @ 512 it/trainer"] = {
        "AllStageHyperTrainer": {"train_losses": [0.9, 0.1]},
        "AllStageMAEDATrainer": {"train_rec_loss": [0.24, 0.2, 0.19], "train_seg_loss": [0.06, -0.02],
                                 "train_losses": [0.3, 0.2]},
        "AllStageTrainer": {"train_task_loss": [0.34, -0.21], "train_data_loss": [-0.3, -0.3],
                            "train_kd_loss": [0.63, 0.14], "train_grad_student": [2.0, 1.5]}}
    text = study_real.loss_term_lines(entries, results)
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    # one chain logs the terms; the checkpoint_best entries and stage 2 (no terms of its own) give no line
    assert lines == ["- stage4 @ 512 it/trainer, seed 0: stage 3 rec 0.240 → 0.190, seg 0.060 → -0.020; stage 4 "
                     "task 0.340 → -0.210, data -0.300 → -0.300, kd 0.630 → 0.140, grad_student 2.000 → 1.500"]
    results[0].loss_terms = {e.name: {} for e in entries}
    assert study_real.loss_term_lines(entries, results) == ""
