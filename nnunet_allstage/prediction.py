"""`nnunet-allstage predict`: cases with any subset of modality files present.

Input is either nnU-Net naming (``CASE_0000.nii.gz`` ... in one folder; absent channel files are missing
modalities) or one folder per case in BraTS naming of any year. Missing modalities get all-zero placeholder
files on the case's grid in a temporary folder, each case's modality code is handed to the network
explicitly, and segmentations are written in the input geometry. A bad case is reported and skipped; the
others are still predicted.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from nnunet_allstage.conversion.labels import relabel
from nnunet_allstage.conversion.sources import brats_layout
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.inference import (expectation_for, find_input_cases, load_expected, materialise_case,
                                       synthetic_sequences)
from nnunet_allstage.modalities import code_label, modality_names_from_dataset_json
from nnunet_allstage.networks import network_code


def brats_label_map(year: str) -> dict[int, int]:
    return brats_layout(year).brats_output_labels


def predict_folder(model, input_folder: Path, output_folder: Path, brats_labels_year: str | None = None,
                   log=print) -> dict[str, str]:
    """Predicts every case; returns {case: 'ok' or the error}."""
    p = model.predictor
    file_ending = p.dataset_json["file_ending"]
    names = modality_names_from_dataset_json(p.dataset_json)
    cases, year = find_input_cases(input_folder, file_ending, names)
    synthetic = synthetic_sequences(input_folder, log)
    output_folder.mkdir(parents=True, exist_ok=True)
    warning = model.warning()
    if warning:
        log(warning)
    record = {"model": str(model.folder), **model.provenance, "warning": warning}
    (output_folder / "nnunet_allstage_model.json").write_text(json.dumps(record, indent=1, default=str))
    expected_record, why_not = load_expected(model, log)
    if expected_record is None:
        log(f"note: expected accuracy per combination unknown: {why_not}")
    predictions = {}
    rw = p.plans_manager.image_reader_writer_class()
    label_map = brats_label_map(brats_labels_year) if brats_labels_year else None
    status = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in tqdm(cases, desc="predicting", unit="case", disable=None):
            try:
                files, code = materialise_case(case, Path(tmp), file_ending)
                image, props = rw.read_images([str(f) for f in files])
                with network_code(p.network, torch.tensor([code], dtype=torch.float32, device=p.device)):
                    seg = p.predict_single_npy_array(image, props, None, None, False)
                if label_map is not None:
                    seg = relabel(seg, label_map)
                rw.write_seg(seg, str(output_folder / f"{case.case_id}{file_ending}"), props)
                combination = code_label(code, names)
                log(f"{case.case_id}: predicted from {combination}")
                entry = {"sequences": [n for n, c in zip(names, code) if c], "combination": combination,
                         "synthetic_sequences": synthetic.get(case.case_id, []), "expected": None, "warning": None}
                if expected_record is not None:
                    entry["expected"], entry["warning"] = expectation_for(expected_record, combination)
                if entry["synthetic_sequences"]:
                    entry["warning"] = " ".join(filter(None, [entry["warning"], (
                        f"{', '.join(entry['synthetic_sequences'])} synthetic: the expected accuracy was measured "
                        f"with real sequences")]))
                    if entry["warning"]:
                        log(f"WARNING {case.case_id}: {entry['warning']}")
                predictions[case.case_id] = entry
                status[case.case_id] = "ok"
            except AllStageError as e:
                log(f"error: {e}")
                status[case.case_id] = str(e)
    (output_folder / "predictions.json").write_text(json.dumps(
        {"expected_accuracy": None if expected_record is None else
         {k: expected_record[k] for k in ("checkpoint", "fold", "validation_cases")},
         "expected_accuracy_missing": why_not, "cases": predictions}, indent=1))
    failed = [c for c, s in status.items() if s != "ok"]
    log(f"{len(status) - len(failed)} of {len(status)} case(s) predicted into {output_folder}"
        + (f"; failed: {', '.join(failed)}" if failed else ""))
    return status
