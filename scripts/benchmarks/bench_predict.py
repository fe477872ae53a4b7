#!/usr/bin/env python
"""Stock nnUNetv2_predict with an AllStageTrainer model against a stock nnUNetTrainer model of the same plans,
same inputs, both measured in this run (best of --repeats). Target: ratio <= 1.1.

    python scripts/bench_predict.py [--device cpu] [--repeats 2] [--workdir bench_output]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import prepare_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset_id", type=int, help="a planned dataset with both models trained")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--workdir", default="bench_output")
    args = parser.parse_args()
    import torch
    from nnunet_allstage.environment import dataset_name_from_id
    workdir = prepare_models(args, ["AllStageTrainer", "nnUNetTrainer"])
    raw = Path(os.environ["nnUNet_raw"]) / dataset_name_from_id(args.dataset_id)
    times = {}
    for tr in ("nnUNetTrainer", "AllStageTrainer"):
        best = float("inf")
        for r in range(args.repeats):
            out = workdir / "bench_predict" / tr
            shutil.rmtree(out, ignore_errors=True)
            cmd = [shutil.which("nnUNetv2_predict") or str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(raw / "imagesTs"), "-o",
                   str(out), "-d", str(args.dataset_id), "-c", "3d_fullres", "-tr", tr, "-p", args.p, "-f", "0",
                   "-device", args.device, "-npp", "1", "-nps", "1"]
            if not args.tta:
                cmd.append("--disable_tta")
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            best = min(best, time.perf_counter() - t)
        times[tr] = best
        print(f"{tr:<16} {best:7.1f} s", flush=True)
    n = len(list((raw / "imagesTs").glob("*_0000.nii.gz")))
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}; {n} case(s), TTA {'on' if args.tta else 'off'}, best of {args.repeats}, whole "
          f"nnUNetv2_predict runs (start-up included)")
    print(f"ratio AllStageTrainer / nnUNetTrainer: {times['AllStageTrainer'] / times['nnUNetTrainer']:.2f} "
          f"(target <= 1.1)")


if __name__ == "__main__":
    main()
