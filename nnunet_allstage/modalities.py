"""Modalities, availability codes, the 2^M - 1 input combinations, prompts and `modality_availability.json`.

A case's availability is a vector ``a`` in {0,1}^M (1 = the modality is present). Two orders are used:

* **bit order** (`code_to_index`): index = sum_i a_i * 2^i - 1. The embedding table of the hyper-network is
  stored in this order, because it is a cheap tensor lookup.
* **report order** (`combinations`): by number of present modalities, then lexicographically by modality
  index (``itertools.combinations``). For BraTS (FLAIR, T1, T1c, T2) this starts with the four single
  modalities and ends with the full set; every table and CSV uses it.
"""
from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from nnunet_allstage.errors import AllStageError

BRATS_MODALITIES = ("FLAIR", "T1", "T1c", "T2")
AVAILABILITY_FILE = "modality_availability.json"
AVAILABILITY_FORMAT_VERSION = 1


def modality_names_from_dataset_json(dataset_json: dict) -> list[str]:
    channels = dataset_json.get("channel_names") or dataset_json.get("modality")
    if not channels:
        raise AllStageError("dataset.json has no 'channel_names'; it is not an nnU-Net v2 dataset.json")
    names = [channels[k] for k in sorted(channels, key=int)]
    if len(names) < 2:
        raise AllStageError(f"dataset.json lists {len(names)} channel(s); missing-modality training needs at least 2")
    return names


def combinations(num_modalities: int) -> list[tuple[int, ...]]:
    """All non-empty availability codes in report order (see module docstring)."""
    combos = []
    for k in range(1, num_modalities + 1):
        for present in itertools.combinations(range(num_modalities), k):
            combos.append(tuple(int(i in present) for i in range(num_modalities)))
    return combos


def code_to_index(code: Sequence[int]) -> int:
    """Bit-order index of a non-empty code (row of the embedding table)."""
    index = sum(int(bool(a)) << i for i, a in enumerate(code)) - 1
    if index < 0:
        raise ValueError("the empty modality set has no index")
    return index


def index_to_code(index: int, num_modalities: int) -> tuple[int, ...]:
    return tuple(((index + 1) >> i) & 1 for i in range(num_modalities))


def code_to_subset(code: Sequence[int], names: Sequence[str]) -> list[str]:
    return [n for n, a in zip(names, code) if a]


def subset_to_code(subset: Iterable[str], names: Sequence[str]) -> tuple[int, ...]:
    subset = list(subset)
    unknown = [s for s in subset if s not in names]
    if unknown:
        raise AllStageError(f"unknown modality {unknown[0]!r}; known: {', '.join(names)}")
    return tuple(int(n in subset) for n in names)


def code_label(code: Sequence[int], names: Sequence[str]) -> str:
    """Short name of a combination, e.g. 'FLAIR+T1c'."""
    return "+".join(code_to_subset(code, names))


def code_markers(code: Sequence[int]) -> str:
    """The paper's availability markers, e.g. '●○●●'."""
    return "".join("●" if a else "○" for a in code)


def prompt(code: Sequence[int], names: Sequence[str]) -> str:
    """The text prompt of METHOD.md: 'The input MRI modalities are FLAIR, T1c and T2.'"""
    present = code_to_subset(code, names)
    if not present:
        raise ValueError("the empty modality set has no prompt")
    listed = present[0] if len(present) == 1 else ", ".join(present[:-1]) + " and " + present[-1]
    return f"The input MRI modalities are {listed}."


def prompts_in_bit_order(names: Sequence[str]) -> list[str]:
    m = len(names)
    return [prompt(index_to_code(i, m), names) for i in range(2 ** m - 1)]


# ---------------------------------------------------------------------------------------------------
# modality_availability.json
# ---------------------------------------------------------------------------------------------------

def make_availability_record(modalities: Sequence[str], cases: dict[str, Sequence[int]], *,
                             test_cases: dict[str, Sequence[int]] | None = None,
                             missing_in_source: dict[str, list[str]] | None = None,
                             simulation: dict | None = None, split: dict | None = None,
                             source: str | None = None, skipped: dict[str, str] | None = None) -> dict:
    record = {
        "format_version": AVAILABILITY_FORMAT_VERSION,
        "modalities": list(modalities),
        "cases": {k: [int(bool(a)) for a in v] for k, v in sorted(cases.items())},
        "test_cases": {k: [int(bool(a)) for a in v] for k, v in sorted((test_cases or {}).items())},
        "missing_in_source": dict(sorted((missing_in_source or {}).items())),
        "simulation": simulation,
        "split": split,
        "source": source,
        "skipped": dict(sorted((skipped or {}).items())),
    }
    validate_availability(record)
    return record


def validate_availability(record: dict, where: str = AVAILABILITY_FILE) -> None:
    for key in ("modalities", "cases"):
        if key not in record:
            raise AllStageError(f"{where}: missing key {key!r}")
    m = len(record["modalities"])
    if m < 2:
        raise AllStageError(f"{where}: needs at least 2 modalities, found {m}")
    for group in ("cases", "test_cases"):
        for case, code in record.get(group, {}).items():
            if len(code) != m or any(a not in (0, 1) for a in code):
                raise AllStageError(f"{where}: case {case}: availability {code} is not a 0/1 vector of length {m}")
            if not any(code):
                raise AllStageError(f"{where}: case {case} has no available modality")


def write_availability(record: dict, folder: str | os.PathLike) -> Path:
    validate_availability(record)
    path = Path(folder) / AVAILABILITY_FILE
    path.write_text(json.dumps(record, indent=1))
    return path


def read_availability(folder_or_file: str | os.PathLike) -> dict:
    path = Path(folder_or_file)
    if path.is_dir():
        path = path / AVAILABILITY_FILE
    if not path.is_file():
        raise AllStageError(f"{path} not found: convert the dataset with `nnunet-allstage convert-brats` or "
                            f"`convert-folder`, then run `nnunet-allstage plan -d ID`")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AllStageError(f"{path} is not valid JSON ({e})") from None
    validate_availability(record, str(path))
    return record


def availability_matrix(record: dict, keys: Sequence[str]) -> np.ndarray:
    """(len(keys), M) float32 availability, for the cases of imagesTr and imagesTs."""
    table = {**record.get("test_cases", {}), **record["cases"]}
    missing = [k for k in keys if k not in table]
    if missing:
        raise AllStageError(f"{AVAILABILITY_FILE} has no entry for case {missing[0]} "
                            f"({len(missing)} case(s) missing); re-run `nnunet-allstage plan`")
    return np.array([table[k] for k in keys], dtype=np.float32)
