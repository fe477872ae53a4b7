"""What predict quotes for a case: the validation accuracy of its combination, measured on the very weights used."""
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from nnunet_allstage.checkpoints import weights_digest
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.expected_accuracy import validation_cases
from nnunet_allstage.inference import EXPECTED_FILE, Model, expectation_for, load_expected

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


def model_in(folder: Path, weights: dict) -> Model:
    """A model as load_model makes it: its checkpoint file and the digest of the weights it loaded from it."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "checkpoint_final.pth"
    torch.save({"network_weights": weights}, checkpoint)
    return Model("m", folder, None, {}, checkpoint, weights_digest(weights))


def test_digest_is_the_weights_identity():
    a = {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2)}
    assert weights_digest(a) == weights_digest({"b": torch.zeros(2), "w": torch.arange(6.0).view(2, 3)})
    assert weights_digest(a) != weights_digest({**a, "b": torch.tensor([0.0, 1e-7])})
    assert weights_digest(a) != weights_digest({**a, "w": torch.arange(6.0).view(3, 2)})  # same values, shape
    assert weights_digest(a) != weights_digest({**a, "w": torch.arange(6.0, dtype=torch.float64).view(2, 3)})


def test_expected_file_belongs_to_the_weights_wherever_they_are_copied(tmp_path):
    weights = {"w": torch.ones(3)}
    model = model_in(tmp_path / "model" / "fold_0", weights)
    assert load_expected(model, log=lambda *_: None)[1].startswith("no expected_accuracy.json")
    (model.checkpoint.parent / EXPECTED_FILE).write_text(json.dumps(
        {"checkpoint": model.checkpoint.name, "weights_sha256": model.weights_digest, **record(0.8, 0.7)}))
    assert load_expected(model)[0]["combinations"]["FLAIR"]["n_validation_cases"] == 3
    # a copy that keeps no file times (cp -r) still quotes it
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "model", copy, copy_function=shutil.copyfile)
    copied = Model("m", copy, None, {}, copy / "fold_0" / "checkpoint_final.pth", weights_digest(weights))
    assert load_expected(copied)[0]["combinations"]["FLAIR"]["n_validation_cases"] == 3
    # a checkpoint trained again beside the old file does not
    retrained = model_in(tmp_path / "model" / "fold_0", {"w": torch.ones(3) * 2})
    found, why = load_expected(retrained)
    assert found is None and "measured on other weights" in why


def test_a_corrupt_expected_file_is_a_warning_and_costs_only_the_quote(tmp_path):
    model = model_in(tmp_path / "fold_0", {"w": torch.ones(3)})
    (model.checkpoint.parent / EXPECTED_FILE).write_text('{"checkpoint": "checkpoint_final.pth", "weights_sh')
    logs = []
    found, why = load_expected(model, log=logs.append)
    assert found is None and "cannot be read" in why
    assert len(logs) == 1 and logs[0].startswith(f"WARNING: {model.checkpoint.parent / EXPECTED_FILE} cannot be read")
    assert "the expected accuracy per combination is not quoted" in logs[0]


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
