"""Conversion of multi-sequence datasets (BraTS of any year, or a user's own folders) to nnU-Net format.

The result follows DESIGN.md: ``nnUNet_raw/DatasetXXX_Name/{imagesTr,labelsTr,imagesTs,labelsTs}``, one file
per modality in dataset order, a missing modality written as an all-zero image on the case's grid, and
``modality_availability.json`` beside dataset.json. Conversion runs in two passes: the first reads and checks
every file (in parallel), the second writes into a temporary folder that is renamed into place only when
everything succeeded, so a failed or interrupted run leaves no half dataset.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.image_io import geometry, read_image, same_grid
from nnunet_allstage.modalities import BRATS_MODALITIES, make_availability_record, write_availability

FILE_ENDING = ".nii.gz"
NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
MAX_DISCOVERY_DEPTH = 4


# ---------------------------------------------------------------------------------------------------
# What a dataset looks like
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSpec:
    """Everything the converter needs to know about the target dataset."""
    modalities: tuple[str, ...]
    labels: dict  # dataset.json 'labels'
    label_map: dict[int, int] | None  # source value -> nnU-Net value; None keeps values
    allowed_source_labels: frozenset[int]
    regions_class_order: tuple[int, ...] | None = None
    description: str = ""
    reference: str = ""


@dataclass
class SourceCase:
    case_id: str
    folder: Path
    modality_files: dict[str, Path | None]
    label_file: Path | None

    def present_code(self, modalities: Sequence[str]) -> tuple[int, ...]:
        return tuple(int(self.modality_files.get(m) is not None) for m in modalities)


# nnU-Net's BraTS region convention (Dataset137): edema -> 1, necrosis/non-enhancing core -> 2, enhancing -> 3.
BRATS_REGION_LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
BRATS_REGIONS_CLASS_ORDER = (1, 2, 3)
BRATS_LEGACY_LABEL_MAP = {0: 0, 1: 2, 2: 1, 4: 3}  # 2017-2021: 1 NCR/NET, 2 ED, 4 ET
BRATS_GLI_LABEL_MAP = {0: 0, 1: 2, 2: 1, 3: 3}  # 2023+: 1 NCR, 2 ED, 3 ET


@dataclass(frozen=True)
class BratsLayout:
    year: str
    suffixes: dict[str, str]  # file suffix -> modality
    label_map: dict[int, int]
    separator: str

    def spec(self) -> DatasetSpec:
        return DatasetSpec(modalities=BRATS_MODALITIES, labels=BRATS_REGION_LABELS, label_map=self.label_map,
                           allowed_source_labels=frozenset(self.label_map),
                           regions_class_order=BRATS_REGIONS_CLASS_ORDER,
                           description=f"BraTS {self.year} converted by nnunet-allstage",
                           reference="https://www.synapse.org/brats")

    @property
    def brats_output_labels(self) -> dict[int, int]:
        """nnU-Net value -> the year's own label value (for `predict --brats-labels`)."""
        return {v: k for k, v in self.label_map.items()}


LEGACY_SUFFIXES = {"flair": "FLAIR", "t1": "T1", "t1ce": "T1c", "t2": "T2"}
GLI_SUFFIXES = {"t2f": "FLAIR", "t1n": "T1", "t1c": "T1c", "t2w": "T2"}
BRATS_YEARS = ("2018", "2019", "2020", "2021", "2023")
CASE_PREFIX_YEAR = [(re.compile(r"^Brats18_", re.I), "2018"), (re.compile(r"^BraTS19_", re.I), "2019"),
                    (re.compile(r"^BraTS20_", re.I), "2020"), (re.compile(r"^BraTS2021_", re.I), "2021"),
                    (re.compile(r"^BraTS-", re.I), "2023")]


def brats_layout(year: str) -> BratsLayout:
    if year not in BRATS_YEARS and not (year.isdigit() and int(year) >= 2023):
        raise AllStageError(f"unsupported BraTS year {year!r}; choose one of 2018, 2019, 2020, 2021, 2023 (or later)")
    if int(year) >= 2023:
        return BratsLayout(year, GLI_SUFFIXES, BRATS_GLI_LABEL_MAP, "-")
    return BratsLayout(year, LEGACY_SUFFIXES, BRATS_LEGACY_LABEL_MAP, "_")


def _nifti_stem_suffix(name: str) -> str | None:
    """'Brats18_x_t1ce.nii.gz' -> 't1ce'; 'BraTS-GLI-00000-000-t2f.nii.gz' -> 't2f'."""
    if not NIFTI_RE.search(name):
        return None
    stem = NIFTI_RE.sub("", name)
    parts = re.split(r"[_-]", stem)
    return parts[-1].lower() if len(parts) > 1 else None


def _case_folders(src: Path, is_case_folder: Callable[[Path], bool]) -> list[Path]:
    found, stack = [], [(src, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = sorted(folder.iterdir())
        except PermissionError as e:
            raise AllStageError(f"cannot read {folder}: {e}") from None
        if is_case_folder(folder):
            found.append(folder)
            continue
        if depth < MAX_DISCOVERY_DEPTH:
            stack.extend((e, depth + 1) for e in reversed(entries) if e.is_dir() and not e.name.startswith("."))
    return found


def detect_brats_year(src: Path) -> str:
    """Year of a BraTS folder, from its file suffixes and case-folder names."""
    suffixes = set(LEGACY_SUFFIXES) | set(GLI_SUFFIXES)
    folders = _case_folders(src, lambda f: any(_nifti_stem_suffix(p.name) in suffixes for p in f.iterdir()
                                               if p.is_file()))
    if not folders:
        raise AllStageError(f"{src}: no BraTS case folders found (expected folders holding files such as "
                            f"<case>_flair.nii.gz or <case>-t2f.nii.gz); check --src")
    first = folders[0]
    names = {_nifti_stem_suffix(p.name) for p in first.iterdir() if p.is_file()}
    if names & set(GLI_SUFFIXES):
        return "2023"
    for pattern, year in CASE_PREFIX_YEAR:
        if pattern.search(first.name):
            return year
    # HGG/LGG folders without a recognisable prefix: 2018 and 2019 share everything that matters here
    return "2018"


def discover_brats_cases(src: Path, layout: BratsLayout) -> list[SourceCase]:
    other = GLI_SUFFIXES if layout.suffixes is LEGACY_SUFFIXES else LEGACY_SUFFIXES
    folders = _case_folders(src, lambda f: any(_nifti_stem_suffix(p.name) in layout.suffixes or
                                               _nifti_stem_suffix(p.name) == "seg" for p in f.iterdir()
                                               if p.is_file()))
    if not folders:
        wrong = _case_folders(src, lambda f: any(_nifti_stem_suffix(p.name) in other for p in f.iterdir()
                                                 if p.is_file()))
        hint = (f" (the files look like another BraTS year's naming; drop --year or pass the right one)"
                if wrong else "")
        raise AllStageError(f"{src}: no BraTS {layout.year} case folders found{hint}")
    cases = []
    for folder in folders:
        files = {m: None for m in BRATS_MODALITIES}
        label = None
        for p in sorted(folder.iterdir()):
            if not p.is_file():
                continue
            suffix = _nifti_stem_suffix(p.name)
            if suffix in layout.suffixes:
                modality = layout.suffixes[suffix]
                if files[modality] is not None:
                    raise AllStageError(f"case {folder.name}: two files for {modality}: {files[modality].name}, {p.name}")
                files[modality] = p
            elif suffix == "seg" or (NIFTI_RE.search(p.name) and "seg" in p.name.lower()):
                # the second test finds BraTS 2020 case 355, whose label file is named W39_1998.09.19_Segm.nii
                if label is not None:
                    raise AllStageError(f"case {folder.name}: two label files: {label.name}, {p.name}")
                label = p
        cases.append(SourceCase(folder.name, folder, files, label))
    return cases


def discover_folder_cases(src: Path, patterns: dict[str, str], label_pattern: str | None) -> list[SourceCase]:
    """One folder per case; a glob pattern per modality (``{case}`` stands for the folder name)."""
    if not src.is_dir():
        raise AllStageError(f"--src {src} is not a folder")
    cases = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        def match(pattern: str) -> Path | None:
            hits = sorted(folder.glob(pattern.replace("{case}", folder.name)))
            if len(hits) > 1:
                raise AllStageError(f"case {folder.name}: pattern {pattern!r} matches {len(hits)} files "
                                    f"({', '.join(h.name for h in hits[:3])}); make it specific")
            return hits[0] if hits else None
        files = {m: match(p) for m, p in patterns.items()}
        label = match(label_pattern) if label_pattern else None
        if any(files.values()) or label is not None:
            cases.append(SourceCase(folder.name, folder, files, label))
    if not cases:
        raise AllStageError(f"{src}: no case folder holds a file matching the modality patterns "
                            f"{', '.join(patterns.values())}")
    return cases


# ---------------------------------------------------------------------------------------------------
# Splits and full-modality-ratio simulation
# ---------------------------------------------------------------------------------------------------

SHIPPED_SPLITS = {"brats2018": "brats2018.json", "brats2020": "brats2020.json"}


def load_split(name_or_path: str) -> dict:
    """A shipped split by name (brats2018 = split 3, 199:29:57; brats2020 = 219:50:100) or a JSON file."""
    if name_or_path.lower() in SHIPPED_SPLITS:
        text = resources.files("nnunet_allstage.splits").joinpath(SHIPPED_SPLITS[name_or_path.lower()]).read_text()
        source = f"shipped:{name_or_path.lower()}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise AllStageError(f"--split-file {name_or_path}: no such file, and not one of the shipped splits "
                                f"({', '.join(SHIPPED_SPLITS)})")
        try:
            text = path.read_text()
        except OSError as e:
            raise AllStageError(f"--split-file {path}: {e}") from None
        source = str(path.resolve())
    try:
        split = json.loads(text)
    except json.JSONDecodeError as e:
        raise AllStageError(f"--split-file {name_or_path}: not valid JSON ({e})") from None
    for key in ("train", "val", "test"):
        if not isinstance(split.get(key, []), list):
            raise AllStageError(f"--split-file {name_or_path}: '{key}' must be a list of case ids")
    if not split.get("train"):
        raise AllStageError(f"--split-file {name_or_path}: needs a non-empty 'train' list (and optional 'val', 'test')")
    return {"name": source, "train": list(split["train"]), "val": list(split.get("val", [])),
            "test": list(split.get("test", []))}


def apply_split(case_ids: Sequence[str], split: dict) -> dict:
    listed = {c: part for part in ("train", "val", "test") for c in split[part]}
    unlisted = sorted(c for c in case_ids if c not in listed)
    if unlisted:
        raise AllStageError(f"{len(unlisted)} case(s) in --src are not in the split {split['name']} "
                            f"(first: {unlisted[0]}); use a split that lists every case, or remove those cases")
    present = set(case_ids)
    result = {part: sorted(c for c in split[part] if c in present) for part in ("train", "val", "test")}
    if not result["train"]:
        raise AllStageError(f"none of the split's training cases are in --src ({split['name']})")
    result["name"] = split["name"]
    result["cases_listed_but_absent"] = sum(c not in present for c in listed)
    return result


def random_split(case_ids: Sequence[str], seed: int, val_fraction: float = 0.1, test_fraction: float = 0.2) -> dict:
    """Seeded split in BraTS2018 split-3 proportions (about 70:10:20); at least one training case."""
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n = len(ids)
    n_test = int(round(test_fraction * n)) if n >= 3 else 0
    n_val = max(1, int(round(val_fraction * n))) if n >= 3 else 0
    test = sorted(ids[i] for i in order[:n_test])
    val = sorted(ids[i] for i in order[n_test:n_test + n_val])
    train = sorted(ids[i] for i in order[n_test + n_val:])
    return {"name": f"random(seed={seed}, val={val_fraction}, test={test_fraction})", "train": train, "val": val,
            "test": test, "cases_listed_but_absent": 0}


def simulate_full_modality_ratio(present: dict[str, tuple[int, ...]], fm_ratio: float, seed: int,
                                 modalities: Sequence[str]) -> dict:
    """METHOD.md, for one group of subjects: a fraction ``fm_ratio`` keeps all modalities (``round(R * N)``, at
    least one subject when the ratio is > 0; Python rounding, halves to even); every other subject loses k
    modalities, k uniform in {1, ..., M-1}, then a uniform random subset of that size. Subjects already missing
    modalities in the source are never counted as full-modality and always keep at least one modality."""
    if not 0.0 <= fm_ratio <= 1.0:
        raise AllStageError(f"--fm-ratio must lie in [0, 1], got {fm_ratio}")
    m = len(modalities)
    rng = np.random.default_rng(seed)
    ids = sorted(present)
    complete = [c for c in ids if all(present[c])]
    n_fm = 0 if fm_ratio == 0 or not ids else max(1, int(round(fm_ratio * len(ids))))
    if n_fm > len(complete):
        raise AllStageError(f"--fm-ratio {fm_ratio} asks for {n_fm} full-modality subjects, but only "
                            f"{len(complete)} of {len(ids)} have every modality in the source")
    full = set(rng.choice(complete, size=n_fm, replace=False).tolist()) if n_fm else set()
    dropped = {}
    for c in ids:
        if c in full:
            continue
        while True:
            k = int(rng.integers(1, m))
            drop = sorted(rng.choice(m, size=k, replace=False).tolist())
            if any(present[c][i] and i not in drop for i in range(m)):
                break
        dropped[c] = [modalities[i] for i in drop]
    return {"full_modality_cases": sorted(full), "dropped": dropped}


def simulate_missing_modalities(present: dict[str, tuple[int, ...]], parts: dict, fm_ratio: float, seed: int,
                                modalities: Sequence[str]) -> dict:
    """The paper's FM ratio: "we randomly select subjects from the train set according to the FM ratio". The
    training subjects are drawn on their own (``round(R * N_train)``), the validation subjects separately with the
    same rule (an independent stream of the same seed), so the count of full-modality training subjects never
    depends on the validation set."""
    groups = {part: simulate_full_modality_ratio({c: present[c] for c in parts[part]}, fm_ratio,
                                                 seed if part == "train" else seed + 7919, modalities)
              for part in ("train", "val")}
    return {"fm_ratio": fm_ratio, "seed": seed, "applies_to": "train and val, each drawn separately",
            "rule": "round(fm_ratio*N) subjects (>=1 if ratio>0) keep all, N per part; others drop k~U{1..M-1} "
                    "modalities",
            "full_modality_cases": sorted(groups["train"]["full_modality_cases"] + groups["val"]["full_modality_cases"]),
            "full_modality_train_cases": groups["train"]["full_modality_cases"],
            "full_modality_val_cases": groups["val"]["full_modality_cases"],
            "dropped": {**groups["train"]["dropped"], **groups["val"]["dropped"]}}


# ---------------------------------------------------------------------------------------------------
# Per-case checks and writing (run in worker processes: plain top-level functions)
# ---------------------------------------------------------------------------------------------------

@dataclass
class CaseJob:
    case: SourceCase
    modalities: tuple[str, ...]
    needs_label: bool
    allowed_labels: frozenset[int]
    label_map: dict[int, int] | None
    keep: tuple[int, ...] = ()  # filled in after the check pass
    out_images: Path | None = None
    out_labels: Path | None = None


@dataclass
class CheckResult:
    case_id: str
    error: str | None = None
    all_zero: list[str] = field(default_factory=list)


def check_case(job: CaseJob) -> CheckResult:
    case = job.case
    try:
        present = [(m, f) for m, f in case.modality_files.items() if f is not None]
        if not present:
            raise AllStageError(f"case {case.case_id}: no modality file found in {case.folder}")
        reference = None
        result = CheckResult(case.case_id)
        for modality, path in present:
            img = read_image(path, case.case_id)
            if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
                raise AllStageError(f"case {case.case_id}: {path.name} is not a 3D scalar image "
                                    f"({img.GetDimension()}D, {img.GetNumberOfComponentsPerPixel()} component(s))")
            arr = sitk.GetArrayViewFromImage(img)
            if not np.isfinite(arr).all():
                raise AllStageError(f"case {case.case_id}: {path.name} contains NaN or infinite values")
            if not arr.any():
                result.all_zero.append(modality)
            if reference is None:
                reference = (path, geometry(img))
            else:
                problem = same_grid(reference[1], geometry(img))
                if problem:
                    raise AllStageError(f"case {case.case_id}: {path.name} is not on the grid of "
                                        f"{reference[0].name}: {problem}")
        if len(result.all_zero) == len(present):
            raise AllStageError(f"case {case.case_id}: every modality image is all zero (an empty case)")
        if result.all_zero:
            raise AllStageError(f"case {case.case_id}: {case.modality_files[result.all_zero[0]].name} is all zero; "
                                f"delete the file so that {result.all_zero[0]} is recorded as missing")
        if case.label_file is None:
            if job.needs_label:
                raise AllStageError(f"case {case.case_id}: no label file in {case.folder}")
        else:
            seg = read_image(case.label_file, case.case_id)
            problem = same_grid(reference[1], geometry(seg))
            if problem:
                raise AllStageError(f"case {case.case_id}: label {case.label_file.name} is not on the image grid: "
                                    f"{problem}")
            values = np.unique(sitk.GetArrayViewFromImage(seg))
            if not np.all(np.isfinite(values)) or not np.all(np.equal(np.mod(values, 1), 0)):
                raise AllStageError(f"case {case.case_id}: label {case.label_file.name} has non-integer values")
            bad = sorted(set(values.astype(int).tolist()) - set(job.allowed_labels))
            if bad:
                raise AllStageError(f"case {case.case_id}: label {case.label_file.name} has value(s) {bad}; "
                                    f"expected only {sorted(job.allowed_labels)}")
        return result
    except AllStageError as e:
        return CheckResult(case.case_id, error=str(e))


def write_case(job: CaseJob) -> str:
    case = job.case
    reference_path = next(f for f in case.modality_files.values() if f is not None)
    reference = sitk.ReadImage(str(reference_path))  # verified by check_case
    for channel, modality in enumerate(job.modalities):
        out = job.out_images / f"{case.case_id}_{channel:04d}{FILE_ENDING}"
        src = case.modality_files.get(modality)
        if src is not None and job.keep[channel]:
            img = sitk.ReadImage(str(src)) if src != reference_path else reference
            if geometry(img) != geometry(reference) or not src.name.lower().endswith(FILE_ENDING):
                img.CopyInformation(reference)  # within tolerance: make the grids exactly equal for nnU-Net
                sitk.WriteImage(img, str(out), useCompression=True)
            else:
                shutil.copyfile(src, out)
        else:
            zero = sitk.Image(reference.GetSize(), reference.GetPixelID())
            zero.CopyInformation(reference)
            sitk.WriteImage(zero, str(out), useCompression=True)
    if case.label_file is not None and job.out_labels is not None:
        seg = sitk.ReadImage(str(case.label_file))
        arr = sitk.GetArrayFromImage(seg).astype(np.int64)
        if job.label_map is not None:
            lut = np.zeros(max(job.label_map) + 1, dtype=np.uint8)
            for k, v in job.label_map.items():
                lut[k] = v
            arr = lut[arr]
        out_seg = sitk.GetImageFromArray(arr.astype(np.uint8))
        out_seg.CopyInformation(reference)
        sitk.WriteImage(out_seg, str(job.out_labels / f"{case.case_id}{FILE_ENDING}"), useCompression=True)
    return case.case_id


def _run_parallel(fn, jobs: list, num_processes: int, desc: str) -> list:
    if num_processes <= 1 or len(jobs) <= 1:
        return [fn(j) for j in tqdm(jobs, desc=desc, unit="case", disable=None)]
    results = [None] * len(jobs)
    with ProcessPoolExecutor(max_workers=num_processes) as pool:
        futures = {pool.submit(fn, j): i for i, j in enumerate(jobs)}
        for fut in tqdm(as_completed(futures), total=len(jobs), desc=desc, unit="case", disable=None):
            results[futures[fut]] = fut.result()
    return results


# ---------------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------------

def nnunet_raw_folder() -> Path:
    raw = os.environ.get("nnUNet_raw")
    if not raw:
        raise AllStageError("nnUNet_raw is not set; run `eval \"$(nnunet-allstage env)\"` or export it yourself")
    return Path(raw)


def existing_dataset_folders(root: Path, dataset_id: int) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())


def convert_dataset(cases: list[SourceCase], spec: DatasetSpec, *, dataset_id: int, dataset_name: str,
                    source: str, split: dict | None = None, split_seed: int = 0, fm_ratio: float | None = None,
                    seed: int = 0, skip_bad: bool = False, force: bool = False, num_processes: int = 1,
                    output_root: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Check, split, simulate and write a dataset. Returns the new dataset folder."""
    if not 1 <= dataset_id <= 999:
        raise AllStageError(f"--dataset-id must lie in 1..999, got {dataset_id}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", dataset_name):
        raise AllStageError(f"dataset name {dataset_name!r} may hold only letters, digits, '_' and '-'")
    root = output_root or nnunet_raw_folder()
    target = root / f"Dataset{dataset_id:03d}_{dataset_name}"
    existing = existing_dataset_folders(root, dataset_id)
    if existing and not force:
        raise AllStageError(f"{existing[0]} already exists; pass --force to replace it, or choose another --dataset-id")

    by_id: dict[str, SourceCase] = {}
    for c in cases:
        if c.case_id in by_id:
            raise AllStageError(f"duplicate case id {c.case_id}: {by_id[c.case_id].folder} and {c.folder}")
        by_id[c.case_id] = c

    parts = apply_split(list(by_id), split) if split else random_split(list(by_id), split_seed)
    test_ids = set(parts["test"])
    jobs = [CaseJob(c, spec.modalities, needs_label=c.case_id not in test_ids,
                    allowed_labels=spec.allowed_source_labels, label_map=spec.label_map) for c in by_id.values()]

    checks = _run_parallel(check_case, jobs, num_processes, "checking")
    skipped = {r.case_id: r.error for r in checks if r.error}
    if skipped and not skip_bad:
        first = next(r for r in checks if r.error)
        more = f" (and {len(skipped) - 1} more case(s); --skip-bad skips and lists them)" if len(skipped) > 1 else \
            " (--skip-bad skips such cases and lists them)"
        raise AllStageError(first.error + more)
    for case_id, reason in skipped.items():
        log(f"skipped: {reason}")
    jobs = [j for j in jobs if j.case.case_id not in skipped]
    for part in ("train", "val", "test"):
        parts[part] = [c for c in parts[part] if c not in skipped]
    if not parts["train"]:
        raise AllStageError("no training case is left after skipping bad cases")

    present = {j.case.case_id: j.case.present_code(spec.modalities) for j in jobs}
    trainval = parts["train"] + parts["val"]
    simulation = None
    keep = dict(present)
    if fm_ratio is not None:
        simulation = simulate_missing_modalities(present, parts, fm_ratio, seed, spec.modalities)
        for c, dropped in simulation["dropped"].items():
            keep[c] = tuple(int(a and m not in dropped) for m, a in zip(spec.modalities, present[c]))

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{target.name}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dirs = {d: tmp / d for d in ("imagesTr", "labelsTr", "imagesTs", "labelsTs")}
        for d in dirs.values():
            d.mkdir(parents=True)
        for j in jobs:
            is_test = j.case.case_id in test_ids
            j.keep = keep[j.case.case_id]
            j.out_images = dirs["imagesTs" if is_test else "imagesTr"]
            j.out_labels = dirs["labelsTs" if is_test else "labelsTr"]
        _run_parallel(write_case, jobs, num_processes, "writing")
        _write_dataset_json(tmp, spec, dataset_name, num_training=len(trainval))
        missing_in_source = {c: [m for m, a in zip(spec.modalities, code) if not a]
                             for c, code in present.items() if not all(code)}
        record = make_availability_record(
            spec.modalities, {c: keep[c] for c in trainval}, test_cases={c: keep[c] for c in parts["test"]},
            missing_in_source=missing_in_source, simulation=simulation,
            split={k: parts[k] for k in ("name", "train", "val", "test")}, source=source, skipped=skipped)
        write_availability(record, tmp)
        for old in existing:
            shutil.rmtree(old)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    n_full = {part: sum(all(keep[c]) for c in parts[part]) for part in ("train", "val")}
    log(f"wrote {target}: {len(parts['train'])} train, {len(parts['val'])} val, {len(parts['test'])} test cases; "
        f"{n_full['train']} of {len(parts['train'])} train and {n_full['val']} of {len(parts['val'])} val cases have "
        f"every modality"
        + (f"; {len(skipped)} skipped" if skipped else ""))
    if parts.get("cases_listed_but_absent"):
        log(f"note: {parts['cases_listed_but_absent']} case(s) of the split are not in --src and were left out")
    return target


def _write_dataset_json(folder: Path, spec: DatasetSpec, dataset_name: str, num_training: int) -> None:
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    generate_dataset_json(str(folder), channel_names={str(i): m for i, m in enumerate(spec.modalities)},
                          labels=spec.labels, num_training_cases=num_training, file_ending=FILE_ENDING,
                          regions_class_order=spec.regions_class_order, dataset_name=dataset_name,
                          description=spec.description, reference=spec.reference,
                          overwrite_image_reader_writer="SimpleITKIO",
                          license="see the source dataset's licence")


def convert_brats(src: str | os.PathLike, *, dataset_id: int, year: str | None = None, name: str | None = None,
                  **kwargs) -> Path:
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
    fm = kwargs.get("fm_ratio")
    default_name = f"BraTS{year}" + (f"_FM{int(round(fm * 100))}" if fm is not None else "")
    return convert_dataset(cases, layout.spec(), dataset_id=dataset_id, dataset_name=name or default_name,
                           source=str(src.resolve()), **kwargs)


def parse_folder_config(config: dict) -> tuple[dict[str, str], str | None, DatasetSpec]:
    """The small JSON (or the equivalent command-line options) of `convert-folder`."""
    modalities = config.get("modalities")
    if not isinstance(modalities, dict) or len(modalities) < 2:
        raise AllStageError("convert-folder needs at least two modalities, e.g. "
                            "--modality T2='*_t2.nii.gz' --modality ADC='*_adc.nii.gz'")
    labels = config.get("labels") or {"background": 0, "foreground": 1}
    if labels.get("background") != 0:
        raise AllStageError("labels must map 'background' to 0")
    regions_order = config.get("regions_class_order")
    values = set()
    for v in labels.values():
        values |= set(v) if isinstance(v, (list, tuple)) else {v}
    label_map = {int(k): int(v) for k, v in config["label_map"].items()} if config.get("label_map") else None
    allowed = frozenset(label_map) if label_map else frozenset(int(v) for v in values)
    spec = DatasetSpec(modalities=tuple(modalities), labels=labels, label_map=label_map,
                       allowed_source_labels=allowed,
                       regions_class_order=tuple(regions_order) if regions_order else None,
                       description=config.get("description", "converted by nnunet-allstage convert-folder"))
    return dict(modalities), config.get("label"), spec


def convert_folder(src: str | os.PathLike, config: dict, *, dataset_id: int, name: str, **kwargs) -> Path:
    patterns, label_pattern, spec = parse_folder_config(config)
    cases = discover_folder_cases(Path(src), patterns, label_pattern)
    return convert_dataset(cases, spec, dataset_id=dataset_id, dataset_name=name, source=str(Path(src).resolve()),
                           **kwargs)


def default_num_processes() -> int:
    return max(1, min(int(os.environ.get("nnUNet_def_n_proc", os.cpu_count() or 1)), os.cpu_count() or 1))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the console script: nnunet-allstage convert-brats / convert-folder")
