"""What predict quotes for a case: the validation accuracy of its combination, from the very checkpoint used."""
import json
import os

import pytest

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.expected_accuracy import (EXPECTED_FILE, checkpoint_identity, expectation_for, load_expected,
                                               validation_cases)

NAMES = ["FLAIR", "T2"]


def record(full_dice, flair_dice, flair_n=3):
    return {"modalities": NAMES, "combinations": {
        "FLAIR": {"code": [1, 0], "n_validation_cases": flair_n, "dice": {"WT": flair_dice}, "hd95": {"WT": 9.0},
                  "mean_dice": flair_dice},
        "T2": {"code": [0, 1], "n_validation_cases": 0},
        "FLAIR+T2": {"code": [1, 1], "n_validation_cases": 4, "dice": {"WT": full_dice}, "hd95": {"WT": 3.0},
                     "mean_dice": full_dice}}}


def test_expectation_and_warning_when_far_below_all_sequences():
    expected, warning = expectation_for(record(0.80, 0.75), "FLAIR")
    assert expected == {"dice": {"WT": 0.75}, "hd95": {"WT": 9.0}, "mean_dice": 0.75, "n_validation_cases": 3}
    assert warning is None  # 5 points below: no warning
    expected, warning = expectation_for(record(0.80, 0.52), "FLAIR")
    assert warning == "from FLAIR the expected mean Dice is 52.0 (3 validation case(s)), against 80.0 with all sequences"
    assert expectation_for(record(0.8, 0.5), "T2") == (None, "no validation case measured T2: accuracy unknown")


def test_expected_file_must_belong_to_the_checkpoint(tmp_path):
    checkpoint = tmp_path / "checkpoint_final.pth"
    checkpoint.write_bytes(b"weights")
    assert load_expected(checkpoint)[1].startswith("no expected_accuracy.json")
    (tmp_path / EXPECTED_FILE).write_text(json.dumps({**checkpoint_identity(checkpoint), **record(0.8, 0.7)}))
    assert load_expected(checkpoint)[0]["combinations"]["FLAIR"]["n_validation_cases"] == 3
    checkpoint.write_bytes(b"other weights, trained again")
    found, why = load_expected(checkpoint)
    assert found is None and "measured on another checkpoint" in why


def test_validation_cases_of_a_fold(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    with pytest.raises(AllStageError, match="fold 'all' has no validation cases"):
        validation_cases("Dataset1_X", "all")
    with pytest.raises(AllStageError, match="plan the dataset first"):
        validation_cases("Dataset1_X", 0)
    os.makedirs(tmp_path / "Dataset1_X")
    (tmp_path / "Dataset1_X" / "splits_final.json").write_text(json.dumps([{"train": ["a"], "val": ["b", "c"]}]))
    assert validation_cases("Dataset1_X", 0) == ["b", "c"]
    with pytest.raises(AllStageError, match="fold 3 is not in"):
        validation_cases("Dataset1_X", 3)
