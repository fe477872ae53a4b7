"""`nnunet-allstage demo`: the main job end to end on synthetic data made on the fly."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from nnunet_allstage.conversion import convert_brats
from nnunet_allstage.environment import apply_default_env
from nnunet_allstage.planning import plan_dataset
from nnunet_allstage.synthetic import write_synthetic_brats

DEMO_DATASET_ID = 990
DEMO_FM_RATIO = 0.25


def run_demo(workdir: Path, num_cases: int = 12, num_processes: int = 2) -> None:
    workdir = workdir.resolve()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(workdir / name)
    apply_default_env(workdir)
    print("=" * 78)
    print("nnunet-allstage demo: SYNTHETIC data (not BraTS), made on the fly; numbers prove the machinery only.")
    print("=" * 78)
    source = workdir / "synthetic_source"
    shutil.rmtree(source, ignore_errors=True)
    src = write_synthetic_brats(source, num_cases=num_cases, seed=0)
    print(f"[1/2] synthetic cases written to {src}")
    convert_brats(src, dataset_id=DEMO_DATASET_ID, name="SyntheticBraTS", fm_ratio=DEMO_FM_RATIO, seed=0,
                  force=True, num_processes=num_processes)
    print(f"[2/2] planning and preprocessing")
    plan_dataset(DEMO_DATASET_ID, num_processes=num_processes)
    print("demo finished: the synthetic dataset is converted and planned in", workdir)
