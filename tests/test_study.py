"""scripts/study_real.py without training: rows, shared jobs, the table's paired statistics."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
import study_real  # noqa: E402


def test_rows_of_other_ladders_and_bad_names():
    rows = study_real.select_rows("table4", "3,4,recipe:3,recipe:3")
    assert [r.label for r in rows] == ["+ co-distillation (full method)", "stage 2 alone (hyper-network from stage 1)",
                                       "stage 4, student from stage 2"]
    assert rows[2].options == {"student_init": "stage2"}
    with pytest.raises(SystemExit, match="names no row"):
        study_real.select_rows("table4", "recipe:99")


def test_jobs_are_shared_exactly_where_the_options_do_not_matter():
    key = study_real.job_key
    # g's learning rate matters to stage 4 only: its stage 2 and 3 are the default row's
    assert key("AllStageHyperTrainer", {"recovery_lr_scale": "0.03"}, 1) == key("AllStageHyperTrainer", {}, 1)
    assert key("AllStageTrainer", {"recovery_lr_scale": "0.03"}, 1) != key("AllStageTrainer", {}, 1)
    # the optimiser changes stage 2, hence every stage 4 built on it; the MAE has its own
    assert key("AllStageHyperTrainer", {"segmentation_optimizer": "nnunet"}, 1) != key("AllStageHyperTrainer", {}, 1)
    assert key("AllStageMAETrainer", {"segmentation_optimizer": "nnunet"}, 1) == key("AllStageMAETrainer", {}, 1)
    assert key("AllStageDropoutTrainer", {}, 4) != key("AllStageDropoutTrainer", {}, 1)
    # a second run of a row is a run of its own, and the first run keeps the key it always had
    assert key("AllStageTrainer", {}, 1, 1) != key("AllStageTrainer", {}, 1) == key("AllStageTrainer", {}, 1, 0)
    # ... on the same predecessors: the folders it links are those of the first runs
    jobs = study_real.Jobs(Path("/r"), "D", "P", None, {})
    assert jobs.folder("AllStageTrainer", {}, 1, 1) != jobs.folder("AllStageTrainer", {}, 1)
    reruns = [r for r in study_real.LADDERS["recipe"] if r.rerun]
    # a chain's minutes count each run once: stage 1 under stages 2 and 3, stage 2 as teacher and as stage 3's
    minutes = {"AllStageMAETrainer": 1.0, "AllStageHyperTrainer": 2.0, "AllStageMAEDATrainer": 4.0,
               "AllStageTrainer": 8.0}
    jobs.minutes = {str(jobs.folder(t, {}, 1)): m for t, m in minutes.items()}
    assert jobs.chain_minutes("AllStageTrainer", {}) == 15.0
    jobs.minutes.update({str(jobs.folder("AllStageTrainer", {"student_init": "stage2"}, 1)): 8.0})
    assert jobs.chain_minutes("AllStageTrainer", {"student_init": "stage2"}) == 15.0
    assert [(r.trainer, r.options) for r in reruns] == [("AllStageHyperTrainer", {}), ("AllStageTrainer", {})]


def summary(tmp_path):
    rows = [study_real.Row("A", "AllStageHyperTrainer"), study_real.Row("B", "AllStageTrainer")]
    cases = ["c1", "c2", "c3"]
    a = {"c1": 0.50, "c2": 0.40, "c3": 0.60}
    b = {"c1": 0.55, "c2": 0.38, "c3": 0.70}  # paired differences +5, -2, +10 Dice points
    per_case = {"A": {c: {"WT": a[c], "avg": a[c]} for c in cases}, "B": {c: {"WT": b[c], "avg": b[c]} for c in cases}}
    data = {"settings": {"rows": [r.__dict__ for r in rows]}, "per_case_dice": [per_case],
            "hd95_avg": [{"A": 20.0, "B": 18.0}], "train_minutes": [{"A": [3.0, 7.0], "B": [9.0, 25.0]}],
            "evaluation": [{"regions": ["WT"]}]}
    path = tmp_path / "study_summary.json"
    path.write_text(json.dumps(data))
    return path


def test_table_paired_differences_by_hand(tmp_path):
    path = summary(tmp_path)
    out = subprocess.run([sys.executable, str(SCRIPTS / "study_real.py"), "--table-from", str(path)],
                         capture_output=True, text=True, check=True).stdout
    row_b = next(line for line in out.splitlines() if line.startswith("| B |"))
    diffs = np.array([5.0, -2.0, 10.0])
    se = diffs.std(ddof=1) / np.sqrt(3)
    assert f"+{diffs.mean():.1f} ± {se:.1f}" in row_b and "| 2/3 |" in row_b and "| 9 / 25 |" in row_b
    out = subprocess.run([sys.executable, str(SCRIPTS / "study_real.py"), "--table-from", str(path),
                          "--reference", "2"], capture_output=True, text=True, check=True).stdout
    row_a = next(line for line in out.splitlines() if line.startswith("| A |"))
    assert f"-{diffs.mean():.1f} ± {se:.1f}" in row_a and "| 1/3 |" in row_a and "Δ avg vs row 2" in out


def test_resume_reads_a_subset_of_the_rows_a_seed_was_evaluated_with():
    full = [study_real.Row("stage 2 alone", "AllStageHyperTrainer"), study_real.Row("full method", "AllStageTrainer"),
            study_real.Row("g slow", "AllStageTrainer", {"recovery_lr_scale": "0.03"})]
    settings = {"spacing": 4.0, "epochs": 8, "iterations": 16, "fm_ratio": 0.25}
    result = [{r.label: {"c1": {"avg": i / 10}} for i, r in enumerate(full)},
              {r.label: 10.0 + i for i, r in enumerate(full)}, {r.label: [1.0, 2.0] for r in full},
              {"regions": ["WT"], "models": {r.label: {"i": i} for i, r in enumerate(full)}}, {"training_min": 1}]
    saved = {"fingerprint": {"rows": [r.__dict__ for r in full], **settings}, "result": result}
    # the same runs under another ladder's labels, fewer of them
    wanted = [study_real.Row("stage 4 (deployed)", "AllStageTrainer"), study_real.Row("teacher", "AllStageHyperTrainer")]
    dice, hd95, minutes, summary, _ = study_real.rows_of_saved_seed(saved, {"rows": [r.__dict__ for r in wanted],
                                                                            **settings})
    assert dice == {"stage 4 (deployed)": {"c1": {"avg": 0.1}}, "teacher": {"c1": {"avg": 0.0}}}
    assert hd95 == {"stage 4 (deployed)": 11.0, "teacher": 10.0}
    assert summary["models"] == {"stage 4 (deployed)": {"i": 1}, "teacher": {"i": 0}} and summary["regions"] == ["WT"]
    # a row it never ran, or other settings, mean training again
    other_options = [study_real.Row("x", "AllStageTrainer", {"student_init": "stage2"})]
    assert study_real.rows_of_saved_seed(saved, {"rows": [r.__dict__ for r in other_options], **settings}) is None
    second_run = [study_real.Row("stage 4 again", "AllStageTrainer", rerun=1)]
    assert study_real.rows_of_saved_seed(saved, {"rows": [r.__dict__ for r in second_run], **settings}) is None
    assert study_real.rows_of_saved_seed(saved, {"rows": [r.__dict__ for r in wanted],
                                                 **{**settings, "epochs": 4}}) is None
