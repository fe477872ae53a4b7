#!/usr/bin/env python
"""The 15-combination evaluation against the naive way (per combination: zero-filled copies of the test images,
then a run of stock nnUNetv2_predict), same model and cases, both measured in this run. Prints the end-to-end
times, the ratio (target: ours >= 3x faster) and whether the segmentations are identical.

    python scripts/bench_evaluate.py [--device cpu] [-tr AllStageTrainer] [--workdir bench_output]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import prepare_models  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset_id", type=int, help="a planned dataset with a trained model "
                                                                "(default: synthetic, untrained model)")
    parser.add_argument("-tr", default="AllStageTrainer")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tta", action="store_true", help="mirroring TTA in both (default off)")
    parser.add_argument("--workdir", default="bench_output")
    args = parser.parse_args()
    import torch
    from nnunet_allstage.evaluation import evaluate, find_test_cases
    from nnunet_allstage.inference import load_model
    from nnunet_allstage.modalities import code_label, combinations
    from nnunet_allstage.environment import dataset_name_from_id, model_folder
    workdir = prepare_models(args, [args.tr])
    name = dataset_name_from_id(args.dataset_id)
    raw = Path(os.environ["nnUNet_raw"]) / name
    folder = model_folder(name, args.tr, args.p, "3d_fullres")
    cases = find_test_cases(raw / "imagesTs", raw / "labelsTs", ".nii.gz", 4)
    names = ["FLAIR", "T1", "T1c", "T2"]
    codes = combinations(4)
    bench = workdir / "bench_evaluate"
    shutil.rmtree(bench, ignore_errors=True)

    t0 = time.perf_counter()
    model = load_model(folder, 0, "checkpoint_final.pth", torch.device(args.device), args.tta, args.tr)
    evaluate([model], cases, codes, bench / "ours", save_segmentations=True, log=lambda *_: None)
    ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    copy_time = 0.0
    for code in codes:
        t1 = time.perf_counter()
        inp = bench / "naive_in" / code_label(code, names)
        inp.mkdir(parents=True)
        for case, files, _ in cases:
            for ch, f in enumerate(files):
                img = sitk.ReadImage(str(f))
                sitk.WriteImage(img if code[ch] else img * 0, str(inp / f.name))
        copy_time += time.perf_counter() - t1
        cmd = [shutil.which("nnUNetv2_predict") or str(Path(sys.executable).parent / "nnUNetv2_predict"), "-i", str(inp), "-o",
               str(bench / "naive_out" / code_label(code, names)), "-d", str(args.dataset_id), "-c", "3d_fullres",
               "-tr", args.tr, "-p", args.p, "-f", "0", "-device", args.device, "-npp", "1", "-nps", "1"]
        if not args.tta:
            cmd.append("--disable_tta")
        subprocess.run(cmd, check=True, capture_output=True)
    naive = time.perf_counter() - t0

    identical = 0
    for code in codes:
        for case, _, label in cases:
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(bench / "ours" / "segmentations" / args.tr /
                                                          code_label(code, names) / label.name)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(bench / "naive_out" / code_label(code, names) /
                                                          label.name)))
            identical += int(np.array_equal(a, b))
    total = len(codes) * len(cases)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"device: {device}; {len(cases)} case(s) x {len(codes)} combinations, model {args.tr}, TTA "
          f"{'on' if args.tta else 'off'}")
    print(f"naive (zero-filled copies + 15 x nnUNetv2_predict): {naive:8.1f} s (of which copies {copy_time:.1f} s)")
    print(f"ours  (nnunet-allstage evaluate, metrics included):  {ours:8.1f} s")
    print(f"speed-up: {naive / ours:.2f}x (target >= 3x); identical segmentations: {identical}/{total}")


if __name__ == "__main__":
    main()
