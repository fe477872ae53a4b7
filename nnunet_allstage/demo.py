"""`nnunet-allstage demo`: the main job end to end on synthetic data made on the fly, on the CPU.

Synthetic data -> conversion at FM ratio 0.25 -> planning -> the four stages and the dropout baseline with
short schedules -> evaluation of both over all 15 input combinations -> table and heatmaps.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from nnunet_allstage.conversion import convert_brats
from nnunet_allstage.environment import apply_default_env
from nnunet_allstage.planning import plan_dataset
from nnunet_allstage.synthetic import write_synthetic_brats

DEMO_DATASET_ID = 990
DEMO_FM_RATIO = 0.25
DEMO_SHAPE = (40, 48, 36)
DEMO_SCHEDULE = "5epochs"
DEMO_THREADS = 2  # with the seed and augmentation in the main process: two runs print the same table
# sized so that the whole demo stays within 15 minutes on 2 CPU cores
DEMO_ITERATIONS = {"NNUNET_ALLSTAGE_ITERATIONS_PER_EPOCH": "5", "NNUNET_ALLSTAGE_VAL_ITERATIONS_PER_EPOCH": "1"}


def run_demo(workdir: Path, num_cases: int = 12, num_processes: int = 2, log=print) -> dict:
    from nnunet_allstage.environment import model_folder
    from nnunet_allstage.evaluation import evaluate, find_test_cases
    from nnunet_allstage.inference import load_model
    from nnunet_allstage.modalities import combinations
    from nnunet_allstage.pipeline import run_pipeline
    import torch

    start = time.time()
    workdir = workdir.resolve()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(workdir / name)
    apply_default_env(workdir)
    os.environ.setdefault("nnUNet_compile", "f")
    real_clip = bool(os.environ.get("NNUNET_ALLSTAGE_CLIP_WEIGHTS"))
    if not real_clip:
        os.environ["NNUNET_ALLSTAGE_CLIP_PRETRAINED"] = "random-test-only"
    banner = ("nnunet-allstage demo: SYNTHETIC data (not BraTS), short CPU schedules; "
              + ("CLIP weights from NNUNET_ALLSTAGE_CLIP_WEIGHTS." if real_clip else
                 "RANDOM-WEIGHT CLIP (no language knowledge).") + " The numbers prove the machinery, not accuracy.")
    log("=" * 100 + "\n" + banner + "\n" + "=" * 100)

    source = workdir / "synthetic_source"
    shutil.rmtree(source, ignore_errors=True)
    src = write_synthetic_brats(source, num_cases=num_cases, seed=0, shape=DEMO_SHAPE)
    log(f"[1/5] {num_cases} synthetic cases written to {src}")
    convert_brats(src, dataset_id=DEMO_DATASET_ID, name="SyntheticBraTS", fm_ratio=DEMO_FM_RATIO, seed=0, force=True,
                  num_processes=num_processes, log=log)
    log("[2/5] planning and preprocessing with nnU-Net")
    shutil.rmtree(workdir / "nnUNet_results", ignore_errors=True)  # a fresh dataset: earlier models are stale
    plan_dataset(DEMO_DATASET_ID, num_processes=num_processes, log=log)
    # seeded, with augmentation in the main process so that its random draws follow the seed too
    env = {**DEMO_ITERATIONS, "NNUNET_ALLSTAGE_SEED": "0", "NNUNET_ALLSTAGE_NUM_THREADS": str(DEMO_THREADS),
           "nnUNet_n_proc_DA": "0"}
    os.environ.update(env)
    log(f"[3/5] the four stages ({DEMO_SCHEDULE} variants, {DEMO_ITERATIONS['NNUNET_ALLSTAGE_ITERATIONS_PER_EPOCH']} "
        f"iterations per epoch)")
    run_pipeline(DEMO_DATASET_ID, "0", schedule=DEMO_SCHEDULE, device="cpu", env=env, log=log, compact=True)
    log("[4/5] the baseline: nnU-Net + modality dropout, same schedule")
    run_pipeline(DEMO_DATASET_ID, "0", schedule=DEMO_SCHEDULE, baseline=True, device="cpu", env=env, log=log,
                 compact=True)

    budget = (f"AllStage (ours) is the end of four trainings (stages 1-4, {DEMO_SCHEDULE} x "
              f"{DEMO_ITERATIONS['NNUNET_ALLSTAGE_ITERATIONS_PER_EPOCH']} iterations each): it saw four trainers' worth "
              f"of iterations; the baseline saw one trainer's worth. On real BraTS cases with every case labelled, the "
              f"baseline given the four stages' iterations beat it; with half of them labelled the two were level "
              f"(documentation/results.md).")
    log("[5/5] evaluation over all 15 input combinations on the test cases. " + budget)
    name = next((workdir / "nnUNet_raw").glob(f"Dataset{DEMO_DATASET_ID}_*")).name
    models = [load_model(model_folder(name, tr + "_" + DEMO_SCHEDULE, "nnUNetPlans", "3d_fullres"), 0,
                         "checkpoint_final.pth", torch.device("cpu"), False, label)
              for tr, label in (("AllStageTrainer", "AllStage (ours)"), ("AllStageDropoutTrainer", "nnU-Net+MDrop"))]
    raw = workdir / "nnUNet_raw" / name
    cases = find_test_cases(raw / "imagesTs", raw / "labelsTs", ".nii.gz", 4)
    out = workdir / "evaluation"
    summary = evaluate(models, cases, combinations(4), out, log=log)
    log(banner)
    log(budget)
    log(f"demo finished in {(time.time() - start) / 60:.1f} min; table: {out / 'table.md'}, heatmaps: "
        f"{out / 'dice_heatmap.png'}, {out / 'hd95_heatmap.png'}")
    return summary
