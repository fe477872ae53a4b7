"""How good a segmentation from a given set of sequences is expected to be: measured once on the fold's validation
cases, stored beside the checkpoint, and quoted by `predict` for every case it segments.

`nnunet-allstage validate` (run by `nnunet-allstage train` after the last stage) predicts every validation case of
the fold with every input combination that the case's own sequences allow (a validation case that lacks T1c says
nothing about T1c), and writes ``expected_accuracy.json`` into the fold folder: per combination the mean Dice and
HD95 per region and the number of validation cases behind them. The file carries a digest of the weights it was
measured on, so a copied model folder keeps its expected accuracy and a retrained one never quotes an old
measurement (`inference.load_expected` reads it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from nnunet_allstage.environment import nnunet_folder
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.inference import EXPECTED_FILE, predict_combination, preprocess_case
from nnunet_allstage.metrics import region_metrics, regions_from_dataset_json
from nnunet_allstage.modalities import code_label, combinations, modality_names_from_dataset_json, read_availability

def validation_cases(dataset_name: str, fold) -> list[str]:
    """The validation cases of ``fold`` in nnU-Net's splits_final.json."""
    if fold == "all":
        raise AllStageError("fold 'all' has no validation cases: expected accuracy needs a model trained on a fold "
                            "(0-4) whose validation cases it never saw")
    splits_file = Path(os.environ.get("nnUNet_preprocessed", "")) / dataset_name / "splits_final.json"
    if not splits_file.is_file():
        raise AllStageError(f"{splits_file} not found: plan the dataset first (nnunet-allstage plan -d ID)")
    splits = json.loads(splits_file.read_text())
    if not 0 <= int(fold) < len(splits):
        raise AllStageError(f"fold {fold} is not in {splits_file} ({len(splits)} folds)")
    return list(splits[int(fold)]["val"])


def measure(model, dataset_name: str, fold, log=print) -> dict:
    """Per-combination Dice/HD95 of ``model`` on the fold's validation cases; written beside its checkpoint."""
    if model.checkpoint is None:
        raise AllStageError("the model was not loaded from a checkpoint file")
    dataset_json = model.predictor.dataset_json
    names = modality_names_from_dataset_json(dataset_json)
    regions = regions_from_dataset_json(dataset_json)
    raw = nnunet_folder("nnUNet_raw") / dataset_name
    availability = read_availability(raw)["cases"]
    ending = dataset_json["file_ending"]
    cases = validation_cases(dataset_name, fold)
    label_rw = model.predictor.plans_manager.image_reader_writer_class()
    scores: dict[tuple, list[dict]] = {code: [] for code in combinations(len(names))}
    work = [(case, code) for case in cases for code in scores
            if all(c <= a for c, a in zip(code, availability.get(case, [])))]
    missing = [c for c in cases if c not in availability]
    if missing:
        raise AllStageError(f"validation case {missing[0]} has no entry in {raw / 'modality_availability.json'}")
    bar = tqdm(total=len(work), desc="expected accuracy", unit="prediction", disable=None)
    for case in cases:
        files = [raw / "imagesTr" / f"{case}_{c:04d}{ending}" for c in range(len(names))]
        label = raw / "labelsTr" / f"{case}{ending}"
        for f in files + [label]:
            if not f.is_file():
                raise AllStageError(f"validation case {case}: {f} not found")
        reference, props = label_rw.read_seg(str(label))
        data, preprocessed_props = preprocess_case(model.predictor, files)
        for code in [code for c, code in work if c == case]:
            seg = predict_combination(model, data, preprocessed_props, code)
            scores[code].append(region_metrics(seg, reference[0], props["spacing"], regions))
            bar.update()
    bar.close()
    per_combination = {}
    for code, rows in scores.items():
        entry = {"code": list(code), "n_validation_cases": len(rows)}
        if rows:
            entry["dice"] = {r: float(np.mean([row[r][0] for row in rows])) for r, _ in regions}
            entry["hd95"] = {r: float(np.mean([row[r][1] for row in rows])) for r, _ in regions}
            entry["mean_dice"] = float(np.mean(list(entry["dice"].values())))
        per_combination[code_label(code, names)] = entry
    record = {"checkpoint": model.checkpoint.name, "weights_sha256": model.weights_digest,
              "trainer": model.provenance.get("trainer"),
              "fold": fold, "validation_cases": cases, "modalities": names, "combinations": per_combination}
    out = model.checkpoint.parent / EXPECTED_FILE
    out.write_text(json.dumps(record, indent=1))
    unmeasured = [k for k, v in per_combination.items() if not v["n_validation_cases"]]
    log(f"expected accuracy of {len(per_combination) - len(unmeasured)} combination(s) on {len(cases)} validation "
        f"case(s) written to {out}" + (f"; no validation case allows {', '.join(unmeasured)}" if unmeasured else ""))
    return record


