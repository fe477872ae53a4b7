#!/usr/bin/env python
"""One short script for a lent GPU: cost of every trainer against stock nnU-Net, at the size our users train.

Synthetic volumes of BraTS size (240x240x155 at 1 mm) planned with nnU-Net's default plans; for stock
nnUNetTrainer and each of our trainers (compiled where nnU-Net would compile: nnUNet_compile as the user has it,
nnU-Net's default is on), seconds per iteration, the ratio to stock and peak GPU memory (goal: stage 4 within
24 GB, the paper's A5000); then prediction time per case of `nnunet-allstage predict` and of `nnUNetv2_predict`
with an AllStageTrainer model against `nnUNetv2_predict` with a stock model. Weights are untrained (cost does
not depend on them). Budget: under 10 minutes on one GPU.

    python scripts/gpu_check.py                         # on a GPU
    python scripts/gpu_check.py --device cpu --tiny     # proves on the CPU that the script works (CI)
    python scripts/gpu_check.py --device cpu --tiny -d 960   # the same on a planned dataset of yours
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
from bench_common import predecessor_checkpoints, prepare_synthetic, untrained_checkpoint, use_dataset  # noqa: E402

BRATS_SHAPE = (240, 240, 155)  # x, y, z at 1 mm
TINY_SHAPE = (40, 48, 36)
MEMORY_GOAL_MB = 24 * 1024


def time_predictions(dataset_id: int, device: str, workdir: Path, repeats: int) -> dict:
    """Best-of-`repeats` seconds per case of whole prediction runs (start-up included), TTA off."""
    from nnunet_allstage.environment import dataset_name_from_id
    bin_dir = Path(sys.executable).parent
    images = Path(os.environ["nnUNet_raw"]) / dataset_name_from_id(dataset_id) / "imagesTs"
    n_cases = len(list(images.glob("*_0000.nii.gz")))
    commands = {
        "nnUNetv2_predict, stock model": [str(bin_dir / "nnUNetv2_predict"), "-c", "3d_fullres", "-tr",
                                          "nnUNetTrainer", "-npp", "1", "-nps", "1"],
        "nnUNetv2_predict, AllStageTrainer": [str(bin_dir / "nnUNetv2_predict"), "-c", "3d_fullres", "-tr",
                                              "AllStageTrainer", "-npp", "1", "-nps", "1"],
        "nnunet-allstage predict, AllStageTrainer": [str(bin_dir / "nnunet-allstage"), "predict", "-tr",
                                                     "AllStageTrainer"],
    }
    seconds = {}
    for name, cmd in commands.items():
        best = float("inf")
        for _ in range(repeats):
            out = workdir / "predictions" / name.replace(" ", "_").replace(",", "")
            shutil.rmtree(out, ignore_errors=True)
            full = cmd + ["-i", str(images), "-o", str(out), "-d", str(dataset_id), "-f", "0", "-device", device,
                          "--disable_tta"]
            start = time.perf_counter()
            result = subprocess.run(full, capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"{name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
            best = min(best, time.perf_counter() - start)
        seconds[name] = best / n_cases
        print(f"{name:<42} {seconds[name]:8.2f} s/case", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="small volumes and one step: proves the script works")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="compiled runs need warm-up steps")
    parser.add_argument("--trainers", nargs="+", help="default: stock and every trainer of bench_train_step")
    parser.add_argument("--workdir", default="gpu_check_output")
    parser.add_argument("-d", dest="dataset_id", type=int,
                        help="a planned dataset instead of the synthetic one (its untrained models go to --workdir)")
    args = parser.parse_args()
    start = time.time()
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no GPU visible: run with --device cpu --tiny to check the script itself")
    from bench_train_step import TRAINERS, measure_steps, print_ratios
    if args.device == "cuda":
        os.environ.setdefault("nnUNet_compile", "true")  # as nnU-Net does by default (the CPU default here is off)
    shape = TINY_SHAPE if args.tiny else BRATS_SHAPE
    steps, warmup = (1, 0) if args.tiny else (args.steps, args.warmup)
    workdir = Path(args.workdir).resolve() / ("tiny" if args.tiny else "brats_size")
    if args.dataset_id is None:
        dataset_id = prepare_synthetic(workdir, shape=shape, num_cases=6 if args.tiny else 5)
    else:
        args.workdir = str(workdir)
        use_dataset(args)
        dataset_id = args.dataset_id
    predecessor_checkpoints(dataset_id, torch.device("cpu"))
    for trainer in ("nnUNetTrainer", "AllStageTrainer"):
        untrained_checkpoint(dataset_id, trainer, torch.device("cpu"))
    print(f"nnUNet_compile={os.environ.get('nnUNet_compile', '(unset: nnU-Net compiles)')}; "
          f"data ready after {time.time() - start:.0f} s", flush=True)

    results = measure_steps(dataset_id, "nnUNetPlans", args.device, steps, warmup, workdir,
                            args.trainers or TRAINERS)
    print_ratios(results, args.device, steps, warmup)
    if args.device == "cuda" and "AllStageTrainer" in results:
        peak = results["AllStageTrainer"]["peak_mb"]
        print(f"stage 4 peak GPU memory {peak / 1024:.1f} GB: "
              f"{'within' if peak <= MEMORY_GOAL_MB else 'ABOVE'} the 24 GB goal")
    print()
    seconds = time_predictions(dataset_id, args.device, workdir, repeats=1 if args.tiny else 2)
    stock = seconds["nnUNetv2_predict, stock model"]
    for name, value in seconds.items():
        print(f"{name:<42} ratio to stock {value / stock:5.2f}")
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\ndevice: {device}; volumes {shape} at 1 mm; total {(time.time() - start) / 60:.1f} min")


if __name__ == "__main__":
    main()
