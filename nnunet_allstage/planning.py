"""`nnunet-allstage plan`: nnU-Net's plan-and-preprocess plus our availability bookkeeping."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from nnunet_allstage.environment import dataset_name_from_id, nnunet_folder
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.modalities import AVAILABILITY_FILE, read_availability

DEFAULT_PLANNER = "ExperimentPlanner"
FINGERPRINT_SOURCE_FILE = "fingerprint_source.json"
PLANNER_PLANS_NAMES = {"ExperimentPlanner": "nnUNetPlans", "nnUNetPlannerResEncM": "nnUNetResEncUNetMPlans",
                       "nnUNetPlannerResEncL": "nnUNetResEncUNetLPlans",
                       "nnUNetPlannerResEncXL": "nnUNetResEncUNetXLPlans"}


def spacing_plans_name(base: str, spacing: Sequence[float]) -> str:
    parts = [format(float(s), "g") for s in spacing]
    return f"{base}_{parts[0]}mm" if len(set(parts)) == 1 else f"{base}_{'x'.join(parts)}mm"


def raw_folder_state(raw: Path) -> str:
    """A digest of the name, size and modification time of every file under a raw dataset folder."""
    digest = hashlib.sha256()
    for path in sorted(p for p in raw.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(raw)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def fingerprint_is_current(raw: Path, preprocessed: Path) -> bool:
    """Whether nnU-Net's dataset fingerprint in ``preprocessed`` was taken from the raw folder as it is now, so that
    planning again (another planner, spacing or configuration) need not read every image again."""
    if not (preprocessed / "dataset_fingerprint.json").is_file():
        return False
    try:
        recorded = json.loads((preprocessed / FINGERPRINT_SOURCE_FILE).read_text())["raw_state"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == raw_folder_state(raw)


@contextlib.contextmanager
def _planning_safe_environment():
    """nnU-Net's planner calls torch.set_num_threads(nnUNet_n_proc_DA), which fails for 0."""
    saved = os.environ.pop("nnUNet_n_proc_DA", None) if os.environ.get("nnUNet_n_proc_DA") == "0" else None
    try:
        yield
    finally:
        if saved is not None:
            os.environ["nnUNet_n_proc_DA"] = saved


def plan_dataset(dataset_id: int, *, configurations: Sequence[str] = ("3d_fullres",), planner: str = DEFAULT_PLANNER,
                 target_spacing: Sequence[float] | None = None, plans_name: str | None = None,
                 num_processes: int = 2, gpu_memory_target_gb: float | None = None,
                 log: Callable[[str], None] = print) -> str:
    """Fingerprint (with integrity check; the fingerprint is taken again only when a raw file changed), plan,
    preprocess, then write splits and check availability. Returns the plans identifier."""
    paths = {n: nnunet_folder(n) for n in ("nnUNet_raw", "nnUNet_preprocessed")}
    name = dataset_name_from_id(dataset_id)
    raw = paths["nnUNet_raw"] / name
    record = read_availability(raw)
    if target_spacing is not None:
        if len(target_spacing) != 3 or any(s <= 0 for s in target_spacing):
            raise AllStageError(f"--target-spacing needs three positive numbers, got {list(target_spacing)}")
        if plans_name is None:
            plans_name = spacing_plans_name(PLANNER_PLANS_NAMES.get(planner, "nnUNetPlans"), target_spacing)
        if any(c != "3d_fullres" for c in configurations):
            raise AllStageError("--target-spacing applies to 3d_fullres only (nnU-Net's own rule); use -c 3d_fullres")
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    preprocessed = paths["nnUNet_preprocessed"] / name
    raw_state = raw_folder_state(raw)
    reuse_fingerprint = fingerprint_is_current(raw, preprocessed)
    with _planning_safe_environment():
        try:
            extract_fingerprints([dataset_id], check_dataset_integrity=True, num_processes=num_processes,
                                 clean=not reuse_fingerprint)
        except AssertionError as e:
            raise AllStageError(f"nnU-Net's dataset integrity check failed for {name}: {e}") from None
        if reuse_fingerprint:
            log(f"reusing the dataset fingerprint of {name}: no file under {raw} changed since it was taken")
        else:
            (preprocessed / FINGERPRINT_SOURCE_FILE).write_text(json.dumps({"raw_state": raw_state}))
        plans_identifier = plan_experiments([dataset_id], planner, gpu_memory_target_in_gb=gpu_memory_target_gb,
                                            overwrite_target_spacing=target_spacing, overwrite_plans_name=plans_name)
        planned = json.loads((paths["nnUNet_preprocessed"] / name / f"{plans_identifier}.json").read_text())
        for c in configurations:
            if c in planned["configurations"]:
                check_deep_supervision_depth(planned["configurations"][c], c, plans_identifier)
        preprocess([dataset_id], plans_identifier, list(configurations), [num_processes])
    write_splits_final(record, preprocessed)
    shutil.copyfile(raw / AVAILABILITY_FILE, preprocessed / AVAILABILITY_FILE)
    plans = json.loads((preprocessed / f"{plans_identifier}.json").read_text())
    for c in configurations:
        if c in plans["configurations"]:
            folder = preprocessed / plans["configurations"][c]["data_identifier"]
            check_preprocessed_availability(record, folder)
            log(f"{c}: availability of {len(record['cases'])} cases matches the preprocessed arrays in {folder}")
    log(f"planned {name} with plans '{plans_identifier}'; train with `nnunet-allstage train -d {dataset_id}"
        + (f" -p {plans_identifier}" if plans_identifier != "nnUNetPlans" else "") + "`")
    return plans_identifier


def check_deep_supervision_depth(configuration: dict, name: str, plans_identifier: str) -> None:
    """nnU-Net's deep supervision leaves out the lowest resolution and normalises the other weights to sum 1; a
    network of two resolution stages has no other, so every loss is 0/0 = NaN and training learns nothing (stock
    nnU-Net trains on through it without a word)."""
    strides = configuration.get("architecture", {}).get("arch_kwargs", {}).get("strides")
    if strides is not None and len(strides) < 3:
        raise AllStageError(f"plans {plans_identifier}, {name}: the planned network has {len(strides)} resolution "
                            f"stages (patch {configuration.get('patch_size')}), too few for nnU-Net's deep "
                            f"supervision (its loss would be NaN); plan at a finer --target-spacing or on larger images")


def write_splits_final(record: dict, preprocessed: Path) -> None:
    """The recorded split as fold 0; without a validation part, nnU-Net's own 5-fold split (its seed), except that
    cases without labels stay in training in every fold (a validation case needs labels). Otherwise nnU-Net makes
    its own split at training time."""
    split = record.get("split")
    unlabelled = set(record.get("unlabelled", []))
    if split and split.get("val"):
        folds = [{"train": sorted(split["train"]), "val": sorted(split["val"])}]
    elif unlabelled:
        from nnunetv2.utilities.crossval_split import generate_crossval_split
        labelled = sorted(c for c in record["cases"] if c not in unlabelled)
        folds = [{"train": sorted(fold["train"] + sorted(unlabelled)), "val": sorted(fold["val"])}
                 for fold in generate_crossval_split(labelled, seed=12345, n_splits=min(5, len(labelled)))]
    else:
        return
    (preprocessed / "splits_final.json").write_text(json.dumps(folds, indent=1))


def check_preprocessed_availability(record: dict, folder: Path) -> None:
    """Marked missing => all zero; marked available => not all zero, per channel of every preprocessed case; a case
    recorded without labels holds nothing but the ignore label, one recorded with labels none of it."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    dataset = infer_dataset_class(str(folder))(str(folder))
    names = record["modalities"]
    unlabelled = set(record.get("unlabelled", []))
    ignore_label = ignore_label_of(folder) if unlabelled else None
    if unlabelled and ignore_label is None:
        raise AllStageError(f"{AVAILABILITY_FILE} records {len(unlabelled)} case(s) without labels, but the dataset "
                            f"has no ignore label in dataset.json; convert it again with nnunet-allstage")
    for key in dataset.identifiers:
        if key not in record["cases"]:
            raise AllStageError(f"case {key} of {folder} has no entry in {AVAILABILITY_FILE}")
        data = dataset.load_case(key)[0]
        if data.shape[0] != len(names):
            raise AllStageError(f"case {key}: {data.shape[0]} channels preprocessed, {len(names)} modalities recorded")
        for c, available in enumerate(record["cases"][key]):
            nonzero = bool(np.any(np.asarray(data[c])))
            if available and not nonzero:
                raise AllStageError(f"case {key}: {names[c]} is marked available but is all zero after preprocessing")
            if not available and nonzero:
                raise AllStageError(f"case {key}: {names[c]} is marked missing but is not all zero; a missing "
                                    f"modality must be stored as an all-zero image")
        if ignore_label is not None:
            check_labels(key, np.asarray(dataset.load_case(key)[1]), key in unlabelled, ignore_label)


def ignore_label_of(preprocessed_data_folder: Path) -> int | None:
    """nnU-Net's ignore label of the dataset whose preprocessed configuration folder this is, or None."""
    dataset_json = preprocessed_data_folder.parent / "dataset.json"
    if not dataset_json.is_file():
        return None
    value = json.loads(dataset_json.read_text()).get("labels", {}).get("ignore")
    return int(value) if value is not None else None


def check_labels(key: str, seg: np.ndarray, unlabelled: bool, ignore_label: int) -> None:
    """A case without labels is the ignore label wherever it is not nnU-Net's outside-the-crop -1; a labelled
    case has no ignore voxel."""
    values = set(np.unique(seg).astype(int).tolist()) - {-1}
    if unlabelled and values != {ignore_label}:
        raise AllStageError(f"case {key} is recorded without labels, but its preprocessed label holds values "
                            f"{sorted(values)} besides the ignore label {ignore_label}")
    if not unlabelled and ignore_label in values:
        raise AllStageError(f"case {key} is recorded with labels, but its preprocessed label holds the ignore label "
                            f"{ignore_label}; record it as unlabelled ({AVAILABILITY_FILE}) or convert it again")
