"""Train/val/test splits: the shipped public BraTS splits, a user's JSON, or a seeded random split."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_allstage.errors import AllStageError

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
    in_source = set(case_ids)
    result = {part: sorted(c for c in split[part] if c in in_source) for part in ("train", "val", "test")}
    if not result["train"]:
        raise AllStageError(f"none of the split's training cases are in --src ({split['name']})")
    result["name"] = split["name"]
    result["cases_listed_but_absent"] = sum(c not in in_source for c in listed)
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
