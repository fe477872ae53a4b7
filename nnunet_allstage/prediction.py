"""`nnunet-allstage predict`: cases with any subset of modality files present.

Input is either nnU-Net naming (``CASE_0000.nii.gz`` ... in one folder; absent channel files are missing
modalities) or one folder per case in BraTS naming of any year. Missing modalities get all-zero placeholder
files on the case's grid in a temporary folder, each case's modality code is handed to the network
explicitly, and segmentations are written in the input geometry. A bad case is reported and skipped; the
others are still predicted.
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk
import torch
from tqdm import tqdm

from nnunet_allstage.conversion.labels import relabel
from nnunet_allstage.conversion.sources import brats_layout, detect_brats_year, discover_brats_cases
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.expected_accuracy import expectation_for, load_expected
from nnunet_allstage.image_io import geometry, read_image, same_grid
from nnunet_allstage.modalities import BRATS_MODALITIES, code_label, modality_names_from_dataset_json
from nnunet_allstage.networks import network_code


@dataclass
class InputCase:
    case_id: str
    files: list[Path | None]  # one per channel, None = missing


def _nnunet_named_cases(folder: Path, file_ending: str, num_channels: int) -> list[InputCase]:
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(file_ending)}$")
    by_case: dict[str, list[Path | None]] = {}
    for p in sorted(folder.iterdir()):
        m = pattern.match(p.name)
        if m and p.is_file():
            channel = int(m.group(2))
            if channel >= num_channels:
                raise AllStageError(f"{p.name}: channel {channel} but the model has {num_channels} channels")
            by_case.setdefault(m.group(1), [None] * num_channels)[channel] = p
    return [InputCase(c, files) for c, files in by_case.items()]


def find_input_cases(folder: Path, file_ending: str, modality_names: list[str]) -> tuple[list[InputCase], str | None]:
    """Cases of the input folder and, for BraTS naming, the detected year."""
    if not folder.is_dir():
        raise AllStageError(f"-i {folder} is not a folder")
    cases = _nnunet_named_cases(folder, file_ending, len(modality_names))
    if cases:
        return cases, None
    if list(modality_names) != list(BRATS_MODALITIES):
        raise AllStageError(f"no files named CASE_XXXX{file_ending} in {folder}")
    year = detect_brats_year(folder)
    brats = discover_brats_cases(folder, brats_layout(year))
    return [InputCase(c.case_id, [c.modality_files[m] for m in BRATS_MODALITIES]) for c in brats], year


def materialise_case(case: InputCase, tmp: Path, file_ending: str) -> tuple[list[Path], tuple[int, ...]]:
    """Zero placeholders for missing channels; checks that present ones share a grid. Returns the channel files
    and the code: a channel whose file is absent or all zero (the plugin's convention, as for stock
    nnUNetv2_predict) is missing."""
    reference, code, files = None, [], []
    for f in case.files:
        nonzero = False
        if f is not None:
            img = read_image(f, case.case_id)
            if reference is None:
                reference = (f, img)
            else:
                problem = same_grid(geometry(reference[1]), geometry(img))
                if problem:
                    raise AllStageError(f"case {case.case_id}: {f.name} is not on the grid of {reference[0].name}: "
                                        f"{problem}")
            nonzero = bool(sitk.GetArrayViewFromImage(img).any())
        code.append(int(nonzero))
    if reference is None:
        raise AllStageError(f"case {case.case_id}: no modality file")
    if not any(code):
        raise AllStageError(f"case {case.case_id}: every modality image is all zero")
    for channel, f in enumerate(case.files):
        if f is None:
            zero = sitk.Image(reference[1].GetSize(), reference[1].GetPixelID())
            zero.CopyInformation(reference[1])
            f = tmp / f"{case.case_id}_{channel:04d}{file_ending}"
            sitk.WriteImage(zero, str(f))
        files.append(f)
    return files, tuple(code)


def brats_label_map(year: str) -> dict[int, int]:
    return brats_layout(year).brats_output_labels


def synthetic_sequences(input_folder: Path, log=print) -> dict[str, list[str]]:
    """{case: sequences made by `nnunet-allstage synthesize`}, from the synthesized.json of the input folder."""
    from nnunet_allstage.synthesis import RECORD_FILE
    record_file = input_folder / RECORD_FILE
    if not record_file.is_file():
        return {}
    cases = {case: sorted(entry["synthetic"]) for case, entry in json.loads(record_file.read_text())["cases"].items()
             if entry["synthetic"]}
    if cases:
        log(f"WARNING: {len(cases)} case(s) of {input_folder} hold SYNTHETIC sequences ({RECORD_FILE}); they are used "
            f"as if real and listed per case in predictions.json")
    return cases


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
    expected_record, why_not = load_expected(model.checkpoint)
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
