"""What a source dataset looks like: BraTS folder layouts of every year (and their label values), a user's own
folders described by file patterns, and finding the cases in them."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from nnunet_allstage.conversion.labels import (BRATS_GLI_LABELS, BRATS_LEGACY_LABELS, BRATS_REGION_LABELS,
                                               BRATS_REGIONS_CLASS_ORDER, inverse_label_map, to_nnunet_label_map)
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.modalities import BRATS_MODALITIES

NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
MAX_DISCOVERY_DEPTH = 4
BRATS_LEGACY_LABEL_MAP = to_nnunet_label_map(BRATS_LEGACY_LABELS)
BRATS_GLI_LABEL_MAP = to_nnunet_label_map(BRATS_GLI_LABELS)


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

    def available_in_source(self, modalities: Sequence[str]) -> tuple[int, ...]:
        return tuple(int(self.modality_files.get(m) is not None) for m in modalities)


@dataclass(frozen=True)
class BratsLayout:
    year: str
    suffixes: dict[str, str]  # file suffix -> modality
    label_map: dict[int, int]
    separator: str

    def spec(self, label_map: dict[int, int] | None = None) -> DatasetSpec:
        """The target dataset; ``label_map`` (source value -> nnU-Net value) replaces the year's own."""
        label_map = label_map or self.label_map
        return DatasetSpec(modalities=BRATS_MODALITIES, labels=BRATS_REGION_LABELS, label_map=label_map,
                           allowed_source_labels=frozenset(label_map),
                           regions_class_order=BRATS_REGIONS_CLASS_ORDER,
                           description=f"BraTS {self.year} converted by nnunet-allstage",
                           reference="https://www.synapse.org/brats")

    @property
    def brats_output_labels(self) -> dict[int, int]:
        """nnU-Net value -> the year's own label value (for `predict --brats-labels`)."""
        return inverse_label_map(self.label_map)


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


def nifti_stem_suffix(name: str) -> str | None:
    """'Brats18_x_t1ce.nii.gz' -> 't1ce'; 'BraTS-GLI-00000-000-t2f.nii.gz' -> 't2f'."""
    if not NIFTI_RE.search(name):
        return None
    stem = NIFTI_RE.sub("", name)
    parts = re.split(r"[_-]", stem)
    return parts[-1].lower() if len(parts) > 1 else None


def case_folders(src: Path, is_case_folder: Callable[[Path], bool]) -> list[Path]:
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
    folders = case_folders(src, lambda f: any(nifti_stem_suffix(p.name) in suffixes for p in f.iterdir()
                                               if p.is_file()))
    if not folders:
        raise AllStageError(f"{src}: no BraTS case folders found (expected folders holding files such as "
                            f"<case>_flair.nii.gz or <case>-t2f.nii.gz); check --src")
    first = folders[0]
    names = {nifti_stem_suffix(p.name) for p in first.iterdir() if p.is_file()}
    if names & set(GLI_SUFFIXES):
        return "2023"
    for pattern, year in CASE_PREFIX_YEAR:
        if pattern.search(first.name):
            return year
    # HGG/LGG folders without a recognisable prefix: 2018 and 2019 share everything that matters here
    return "2018"


def discover_brats_cases(src: Path, layout: BratsLayout) -> list[SourceCase]:
    other = GLI_SUFFIXES if layout.suffixes is LEGACY_SUFFIXES else LEGACY_SUFFIXES
    folders = case_folders(src, lambda f: any(nifti_stem_suffix(p.name) in layout.suffixes or
                                               nifti_stem_suffix(p.name) == "seg" for p in f.iterdir()
                                               if p.is_file()))
    if not folders:
        wrong = case_folders(src, lambda f: any(nifti_stem_suffix(p.name) in other for p in f.iterdir()
                                                 if p.is_file()))
        hint = (" (the files look like another BraTS year's naming; drop --year or pass the right one)"
                if wrong else "")
        raise AllStageError(f"{src}: no BraTS {layout.year} case folders found{hint}")
    cases = []
    for folder in folders:
        files = {m: None for m in BRATS_MODALITIES}
        label = None
        for p in sorted(folder.iterdir()):
            if not p.is_file():
                continue
            suffix = nifti_stem_suffix(p.name)
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
