"""Modalities and availability: codes, the 2^M - 1 input combinations, prompts, `modality_availability.json`
and the simulation of missing modalities at a full-modality (FM) ratio.

A case's availability is a vector ``a`` in {0,1}^M (1 = the modality is present). Two orders are used:

* **bit order** (`code_to_index`): index = sum_i a_i * 2^i - 1. The embedding table of the hyper-network is
  stored in this order, because it is a cheap tensor lookup.
* **report order** (`combinations`): by number of present modalities, then lexicographically by modality
  index (``itertools.combinations``). For BraTS (FLAIR, T1, T1c, T2) this starts with the four single
  modalities and ends with the full set; every table and CSV uses it.

One name per concept, throughout the package: ``in_source``, what the source folder had; ``available``, what a
case has in the converted data (after any FM simulation); ``kept``, the subset modality dropout keeps for one
training step; ``code``, the vector handed to a network (the kept set; all ones for the frozen teacher).
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
        for subset in itertools.combinations(range(num_modalities), k):
            combos.append(tuple(int(i in subset) for i in range(num_modalities)))
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
    """The text prompt of the hyper-network: 'The input MRI modalities are FLAIR, T1c and T2.'"""
    available = code_to_subset(code, names)
    if not available:
        raise ValueError("the empty modality set has no prompt")
    listed = available[0] if len(available) == 1 else ", ".join(available[:-1]) + " and " + available[-1]
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
                             source: str | None = None, skipped: dict[str, str] | None = None,
                             unlabelled: Sequence[str] = (), labels: dict | None = None) -> dict:
    """The record beside dataset.json. ``unlabelled``: training cases without labels (their label files are all
    nnU-Net's ignore label); ``labels``: where they came from (a folder without labels, the --labelled-fraction
    simulation)."""
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
        "unlabelled": sorted(unlabelled),
        "labels": labels,
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
    unknown = sorted(set(record.get("unlabelled", [])) - set(record["cases"]))
    if unknown:
        raise AllStageError(f"{where}: unlabelled case {unknown[0]} is not a training case of the record")


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


def simulate_full_modality_ratio(in_source: dict[str, tuple[int, ...]], fm_ratio: float, seed: int,
                                 modalities: Sequence[str]) -> dict:
    """The FM-ratio rule (documentation/dataset_conversion.md), for one group of subjects: a fraction ``fm_ratio`` keeps all modalities (``round(R * N)``, at
    least one subject when the ratio is > 0; Python rounding, halves to even); every other subject loses k
    modalities, k uniform in {1, ..., M-1}, then a uniform random subset of that size. Subjects already missing
    modalities in the source are never counted as full-modality and always keep at least one modality."""
    if not 0.0 <= fm_ratio <= 1.0:
        raise AllStageError(f"--fm-ratio must lie in [0, 1], got {fm_ratio}")
    m = len(modalities)
    rng = np.random.default_rng(seed)
    ids = sorted(in_source)
    complete = [c for c in ids if all(in_source[c])]
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
            if any(in_source[c][i] and i not in drop for i in range(m)):
                break
        dropped[c] = [modalities[i] for i in drop]
    return {"full_modality_cases": sorted(full), "dropped": dropped}


def simulate_missing_modalities(in_source: dict[str, tuple[int, ...]], parts: dict, fm_ratio: float, seed: int,
                                modalities: Sequence[str]) -> dict:
    """The paper's FM ratio: "we randomly select subjects from the train set according to the FM ratio". The
    training subjects are drawn on their own (``round(R * N_train)``), the validation subjects separately with the
    same rule (an independent stream of the same seed), so the count of full-modality training subjects never
    depends on the validation set."""
    groups = {part: simulate_full_modality_ratio({c: in_source[c] for c in parts[part]}, fm_ratio,
                                                 seed if part == "train" else seed + 7919, modalities)
              for part in ("train", "val")}
    return {"fm_ratio": fm_ratio, "seed": seed, "applies_to": "train and val, each drawn separately",
            "rule": "round(fm_ratio*N) subjects (>=1 if ratio>0) keep all, N per part; others drop k~U{1..M-1} "
                    "modalities",
            "full_modality_cases": sorted(groups["train"]["full_modality_cases"] + groups["val"]["full_modality_cases"]),
            "full_modality_train_cases": groups["train"]["full_modality_cases"],
            "full_modality_val_cases": groups["val"]["full_modality_cases"],
            "dropped": {**groups["train"]["dropped"], **groups["val"]["dropped"]}}
