"""Converting a whole dataset: check every case, split, simulate the FM ratio, write, in two passes.

The first pass reads and checks every file (in parallel); the second writes into a temporary folder that is
renamed into place only when everything succeeded, so a failed or interrupted run leaves no half dataset.
"""
from __future__ import annotations

import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from nnunet_allstage.conversion.cases import FILE_ENDING, CaseJob, check_case, write_case
from nnunet_allstage.conversion.sources import (DatasetSpec, SourceCase, brats_layout, detect_brats_year,
                                                discover_brats_cases, discover_folder_cases, parse_folder_config)
from nnunet_allstage.conversion.splits import apply_split, random_split
from nnunet_allstage.environment import nnunet_folder
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.modalities import make_availability_record, simulate_missing_modalities, write_availability


def run_parallel(fn, jobs: list, num_processes: int, desc: str) -> list:
    if num_processes <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc, unit="case", disable=None)]
    results = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=num_processes) as pool:
        futures = {pool.submit(fn, j): i for i, j in enumerate(jobs)}
        for fut in tqdm(as_completed(futures), total=len(jobs), desc=desc, unit="case", disable=None):
            results[futures[fut]] = fut.result()
    return results



def existing_dataset_folders(root: Path, dataset_id: int) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())


def convert_dataset(cases: list[SourceCase], spec: DatasetSpec, *, dataset_id: int, dataset_name: str,
                    source: str, split: dict | None = None, split_seed: int = 0, fm_ratio: float | None = None,
                    seed: int = 0, skip_bad: bool = False, force: bool = False, num_processes: int = 1,
                    output_root: Path | None = None, unlabelled: list[SourceCase] | None = None,
                    unlabelled_source: str | None = None, keep_labels: bool = False,
                    allow_unlabelled: bool = False, labelled_fraction: float | None = None,
                    log: Callable[[str], None] = print) -> Path:
    """Check, split, simulate and write a dataset. Returns the new dataset folder.

    ``unlabelled``: cases without labels, added to the training set (with ``keep_labels``, those that do have a
    label file keep it instead of stopping the conversion). ``allow_unlabelled``: a case of ``cases`` without a label
    file is an unlabelled training case (or, listed so by the split, a test case) instead of an error.
    ``labelled_fraction``: a simulation for studies that keeps the labels of round(F * N) training subjects (at
    least one) and drops the others' (seeded). An unlabelled case is never a validation or test case."""
    if labelled_fraction is not None and not 0 < labelled_fraction <= 1:
        raise AllStageError(f"--labelled-fraction must lie in (0, 1], got {labelled_fraction}")
    if not 1 <= dataset_id <= 999:
        raise AllStageError(f"--dataset-id must lie in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", dataset_name):
        raise AllStageError(f"dataset name {dataset_name!r} may hold only letters, digits, '_' and '-'")
    root = output_root or nnunet_folder("nnUNet_raw")
    target = root / f"Dataset{dataset_id:03d}_{dataset_name}"
    existing = existing_dataset_folders(root, dataset_id)
    if existing and not force:
        raise AllStageError(f"{existing[0]} already exists; pass --force to replace it, or choose another --dataset-id")
    by_id = cases_by_id(cases)
    extra = unlabelled_training_cases(by_id, unlabelled or [], keep_labels)
    without_label = {c for c, case in by_id.items() if case.label_file is None} if allow_unlabelled else set()
    if split:
        in_val = sorted(without_label & set(split["val"]))
        if in_val:
            raise AllStageError(f"case {in_val[0]} has no label file, but the split puts it in 'val': validation "
                                f"cases need labels")
        without_label -= set(split["test"])  # a test case needs no label
    parts = apply_split([c for c in by_id if c not in without_label], split) if split else \
        random_split([c for c in by_id if c not in without_label], split_seed)
    parts["train"] = sorted(parts["train"] + sorted(without_label) + sorted(extra))
    no_label = sorted(without_label | {c for c, case in extra.items() if case.label_file is None})
    by_id.update(extra)
    jobs = [CaseJob(c, spec.modalities, needs_label=c.case_id not in parts["test"] and c.case_id not in no_label,
                    allowed_labels=spec.allowed_source_labels, label_map=spec.label_map) for c in by_id.values()]
    jobs, skipped = check_cases(jobs, parts, skip_bad, num_processes, log)
    labels = label_record(jobs, parts, no_label, labelled_fraction, seed, unlabelled_source)
    spec = with_ignore_label(spec) if labels["unlabelled"] else spec
    for j in jobs:
        if j.case.case_id in labels["unlabelled"]:
            j.ignore_label = spec.labels["ignore"]

    in_source = {j.case.case_id: j.case.available_in_source(spec.modalities) for j in jobs}
    available = dict(in_source)
    simulation = None
    if fm_ratio is not None:
        simulation = simulate_missing_modalities(in_source, parts, fm_ratio, seed, spec.modalities)
        for c, dropped in simulation["dropped"].items():
            available[c] = tuple(int(a and m not in dropped) for m, a in zip(spec.modalities, in_source[c]))
    for j in jobs:
        j.available = available[j.case.case_id]
    trainval = parts["train"] + parts["val"]
    record = make_availability_record(
        spec.modalities, {c: available[c] for c in trainval}, test_cases={c: available[c] for c in parts["test"]},
        missing_in_source={c: [m for m, a in zip(spec.modalities, code) if not a]
                           for c, code in in_source.items() if not all(code)},
        simulation=simulation, split={k: parts[k] for k in ("name", "train", "val", "test")}, source=source,
        skipped=skipped, unlabelled=labels["unlabelled"], labels=labels)
    write_dataset(jobs, set(parts["test"]), record, spec, dataset_name, root, target, existing, num_processes)

    n_full = {part: sum(all(available[c]) for c in parts[part]) for part in ("train", "val")}
    log(f"wrote {target}: {len(parts['train'])} train, {len(parts['val'])} val, {len(parts['test'])} test cases; "
        f"{n_full['train']} of {len(parts['train'])} train and {n_full['val']} of {len(parts['val'])} val cases have "
        f"every modality"
        + (f"; {len(labels['unlabelled'])} training case(s) without labels (used by stages 1 and 3 only)"
           if labels["unlabelled"] else "")
        + (f"; {len(skipped)} skipped" if skipped else ""))
    if parts.get("cases_listed_but_absent"):
        log(f"note: {parts['cases_listed_but_absent']} case(s) of the split are not in --src and were left out")
    return target


def unlabelled_training_cases(labelled: dict[str, SourceCase], unlabelled: list[SourceCase],
                              keep_labels: bool) -> dict[str, SourceCase]:
    """The cases of the unlabelled folder by id: none may share an id with a labelled one, and one that has a label
    file stops the conversion unless ``keep_labels`` (then it joins the training set with its label)."""
    out = cases_by_id(unlabelled)
    both = sorted(set(out) & set(labelled))
    if both:
        raise AllStageError(f"case {both[0]} is in --src ({labelled[both[0]].folder}) and in --unlabelled-src "
                            f"({out[both[0]].folder}); each case must come from one folder")
    with_label = sorted(c for c, case in out.items() if case.label_file is not None)
    if with_label and not keep_labels:
        case = out[with_label[0]]
        raise AllStageError(f"case {case.case_id} of --unlabelled-src has a label file ({case.label_file.name}); "
                            f"pass --keep-labels to keep such labels, or remove the file"
                            + (f" ({len(with_label) - 1} more case(s) have one)" if len(with_label) > 1 else ""))
    return out


def label_record(jobs: list[CaseJob], parts: dict, no_label: list[str], labelled_fraction: float | None, seed: int,
                 unlabelled_source: str | None) -> dict:
    """Which training cases are unlabelled (no label file, or their label dropped by the --labelled-fraction
    simulation), as modality_availability.json records it."""
    present = {j.case.case_id for j in jobs}
    unlabelled = [c for c in no_label if c in present]
    simulation = None
    if labelled_fraction is not None:
        candidates = sorted(c for c in parts["train"] if c in present and c not in unlabelled)
        n_keep = max(1, int(round(labelled_fraction * len(candidates))))
        kept = sorted(np.random.default_rng(seed + 104729).choice(candidates, size=n_keep, replace=False).tolist())
        dropped = sorted(set(candidates) - set(kept))
        unlabelled = sorted(unlabelled + dropped)
        simulation = {"labelled_fraction": labelled_fraction, "seed": seed, "rule": "round(F*N_train) training "
                      "subjects (>=1) keep their labels; the others' are dropped", "kept": kept, "dropped": dropped}
    if unlabelled and len(unlabelled) == sum(c in present for c in parts["train"]):
        raise AllStageError("every training case would be unlabelled: the segmentation stages need labelled cases "
                            "(give --src cases with labels, or a larger --labelled-fraction)")
    return {"unlabelled": sorted(unlabelled), "unlabelled_source": unlabelled_source, "simulation": simulation}


def with_ignore_label(spec: DatasetSpec) -> DatasetSpec:
    """The dataset's labels plus nnU-Net's ignore label (the highest value), which unlabelled cases are made of."""
    from dataclasses import replace
    values = [v for value in spec.labels.values() for v in (value if isinstance(value, (list, tuple)) else [value])]
    return replace(spec, labels={**spec.labels, "ignore": max(values) + 1})


def cases_by_id(cases: list[SourceCase]) -> dict[str, SourceCase]:
    by_id: dict[str, SourceCase] = {}
    for c in cases:
        if c.case_id in by_id:
            raise AllStageError(f"duplicate case id {c.case_id}: {by_id[c.case_id].folder} and {c.folder}")
        by_id[c.case_id] = c
    return by_id


def check_cases(jobs: list[CaseJob], parts: dict, skip_bad: bool, num_processes: int,
                log: Callable[[str], None]) -> tuple[list[CaseJob], dict[str, str]]:
    """The first pass: every case checked; a bad one stops the conversion, or with --skip-bad is left out of the
    jobs and of the split (``parts`` is updated in place). Returns the remaining jobs and {case: why skipped}."""
    checks = run_parallel(check_case, jobs, num_processes, "checking")
    skipped = {r.case_id: r.error for r in checks if r.error}
    if skipped and not skip_bad:
        first = next(r for r in checks if r.error)
        more = f" (and {len(skipped) - 1} more case(s); --skip-bad skips and lists them)" if len(skipped) > 1 else \
            " (--skip-bad skips such cases and lists them)"
        raise AllStageError(first.error + more)
    for reason in skipped.values():
        log(f"skipped: {reason}")
    for part in ("train", "val", "test"):
        parts[part] = [c for c in parts[part] if c not in skipped]
    if not parts["train"]:
        raise AllStageError("no training case is left after skipping bad cases")
    return [j for j in jobs if j.case.case_id not in skipped], skipped


def write_dataset(jobs: list[CaseJob], test_ids: set[str], record: dict, spec: DatasetSpec, dataset_name: str,
                  root: Path, target: Path, existing: list[Path], num_processes: int) -> None:
    """The second pass: everything written into a temporary folder, renamed into place only at the end."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dirs = {d: tmp / d for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
        for d in dirs.values():
            d.mkdir(parents=True)
        for j in jobs:
            is_test = j.case.case_id in test_ids
            j.out_images = dirs["imagesTs" if is_test else "imagesTr"]
            j.out_labels = dirs["labelsTs" if is_test else "labelsTr"]
        run_parallel(write_case, jobs, num_processes, "writing")
        write_dataset_json(tmp, spec, dataset_name, num_training=len(record["cases"]))
        write_availability(record, tmp)
        for old in existing:
            shutil.rmtree(old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_dataset_json(folder: Path, spec: DatasetSpec, dataset_name: str, num_training: int) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    generate_dataset_json(str(folder), channel_names={str(i): m for i, m in enumerate(spec.modalities)},
                          labels=spec.labels, num_training_cases=num_training, file_ending=FILE_ENDING,
                          regions_class_order=spec.regions_class_order, dataset_name=dataset_name,
                          description=spec.description, reference=spec.reference,
                          overwrite_image_reader_writer="SimpleITKIO",
                          license="see the source dataset's licence")


def convert_brats(src: str | os.PathLike, *, dataset_id: int, year: str | None = None, name: str | None = None,
                  label_map: dict[int, int] | None = None, unlabelled_src: str | os.PathLike | None = None,
                  **kwargs) -> Path:
    """A BraTS training folder of any year; ``label_map`` (BraTS value -> nnU-Net value) defaults to the year's.
    ``unlabelled_src``: a BraTS folder of any layout (e.g. a validation set) whose cases join the training set
    without labels."""
    src = Path(src)
    if not src.is_dir():
        raise AllStageError(f"--src {src} is not a folder")
    detected = detect_brats_year(src)
    if year is not None:
        if (int(year) >= 2023) != (int(detected) >= 2023):
            raise AllStageError(f"--year {year} does not match the files in {src}, which use BraTS {detected} naming")
    else:
        year = detected
    layout = brats_layout(year)
    cases = discover_brats_cases(src, layout)
    if unlabelled_src is not None:
        unlabelled_src = Path(unlabelled_src)
        if not unlabelled_src.is_dir():
            raise AllStageError(f"--unlabelled-src {unlabelled_src} is not a folder")
        other_year = detect_brats_year(unlabelled_src)
        if kwargs.get("keep_labels") and (int(other_year) >= 2023) != (int(year) >= 2023):
            raise AllStageError(f"--keep-labels: the labels of --unlabelled-src (BraTS {other_year} naming) use other "
                                f"values than those of --src (BraTS {year}); convert the folders separately")
        kwargs.update(unlabelled=discover_brats_cases(unlabelled_src, brats_layout(other_year)),
                      unlabelled_source=str(unlabelled_src.resolve()))
    fm = kwargs.get("fm_ratio")
    default_name = f"BraTS{year}" + (f"_FM{int(round(fm * 100))}" if fm is not None else "")
    return convert_dataset(cases, layout.spec(label_map), dataset_id=dataset_id, dataset_name=name or default_name,
                           source=str(src.resolve()), **kwargs)


def convert_folder(src: str | os.PathLike, config: dict, *, dataset_id: int, name: str, **kwargs) -> Path:
    patterns, label_pattern, spec = parse_folder_config(config)
    cases = discover_folder_cases(Path(src), patterns, label_pattern)
    return convert_dataset(cases, spec, dataset_id=dataset_id, dataset_name=name, source=str(Path(src).resolve()),
                           **kwargs)


def default_num_processes() -> int:
    return max(1, min(int(os.environ.get("nnUNet_def_n_proc", os.cpu_count() or 1)), os.cpu_count() or 1))
