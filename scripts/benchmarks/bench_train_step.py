#!/usr/bin/env python
"""Median time per training iteration and peak memory of each plugin trainer against stock nnUNetTrainer, on
the same plans, patch and batch, measured in this run. Warm-up excluded; each trainer in its own process (so
peak RSS is its own). Data loading is excluded: every step gets the same prepared batch. Every trainer is measured
in each of --rounds rounds (the trainers one after another within a round) and keeps its fastest round: other
load on the machine only ever slows a step down, so the fastest is the best estimate of its own cost (timeit's
rule), and a burst of load during one trainer's turn no longer moves its ratio.

    python scripts/bench_train_step.py [--device cuda] [--steps 10] [--rounds 3] [--workdir bench_output]
    python scripts/bench_train_step.py -d 902 -p nnUNetPlans_4mm --device cpu     # a planned dataset of yours
                                                  # (untrained predecessors go to --workdir, not your results)
    python scripts/bench_train_step.py --compile   # compiled as nnU-Net compiles on a GPU (stock included;
                                                  # nnU-Net itself never compiles on the CPU)

Targets (ratio to stock): AllStageTrainer <= 2.8, AllStageHyperTrainer <= 1.15, AllStageMAETrainer <= 1.1.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import copy_batch, make_trainer, predecessor_checkpoints, ready_to_step, use_dataset  # noqa: E402

TRAINERS = ["nnUNetTrainer", "AllStageDropoutTrainer", "AllStageMAETrainer", "AllStageHyperTrainer",
            "AllStageMAEDATrainer", "AllStageTrainer"]
TARGETS = {"AllStageTrainer": 2.8, "AllStageHyperTrainer": 1.15, "AllStageMAETrainer": 1.1}


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    import os
    import torch
    from contextlib import nullcontext
    from nnunet_allstage.private_api import nnunet_compiling_everywhere
    from nnunet_allstage.environment import keep_freed_memory_in_process
    os.environ["nnUNet_n_proc_DA"] = "0"
    device = torch.device(args.device)
    if args.glibc_allocator:
        os.environ["NNUNET_ALLSTAGE_CPU_ALLOCATOR"] = "glibc"
    elif device.type == "cpu":
        keep_freed_memory_in_process()  # our trainers do this on the CPU: stock is measured the same way
    trainer = make_trainer(args.dataset_id, args.child, device, args.p)
    with nnunet_compiling_everywhere() if args.compile else nullcontext():
        trainer.initialize()
    batch = ready_to_step(trainer)

    def step():
        trainer.train_step(copy_batch(batch))
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        reset_peak_rss()  # the start-up (imports, data unpacking) is not the step's memory
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else peak_rss_mb()
    print(json.dumps({"trainer": args.child, "median_s": statistics.median(times), "peak_mb": peak,
                      "patch": list(trainer.configuration_manager.patch_size),
                      "batch": trainer.configuration_manager.batch_size}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset_id", type=int, help="a planned dataset (default: synthetic)")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="steps before timing (compiled: at least 2)")
    parser.add_argument("--rounds", type=int, default=2, help="measure every trainer this many times; keep the "
                                                              "fastest")
    parser.add_argument("--compile", action="store_true", help="torch.compile every network of every trainer "
                                                               "(stock included), as nnU-Net does on a GPU")
    parser.add_argument("--workdir", default="bench_output")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--glibc-allocator", action="store_true",
                        help="CPU: glibc's default allocator for every trainer, also ours (by default every trainer, "
                             "stock included, keeps freed memory in the process, as our trainers do on the CPU)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = use_dataset(args)
    if args.child:
        return child(args)
    if args.compile and args.warmup < 2:
        args.warmup = 2  # the first steps compile forward and backward
    results = measure_steps(args.dataset_id, args.p, args.device, args.steps, args.warmup, workdir, args.trainers,
                            args.rounds, args.compile, args.glibc_allocator)
    print_ratios(results, args.device, args.steps, args.warmup, args.rounds, args.compile)
    if args.device == "cpu":
        print("allocator: " + ("glibc's defaults for every trainer (cpu_allocator=glibc)" if args.glibc_allocator else "freed memory kept in the process for every trainer, "
                               "stock included (what our trainers set on the CPU)"))


def measure_steps(dataset_id: int, plans: str, device: str, steps: int, warmup: int, workdir: Path,
                  trainers: list[str], rounds: int = 1, compile: bool = False, glibc_allocator: bool = False) -> dict:
    """{trainer: {median_s, peak_mb, patch, batch, rounds_s}}, each trainer in its own process, in every round;
    the fastest round counts (rounds_s: every round's median). Untrained predecessors."""
    import os
    import torch
    predecessor_checkpoints(dataset_id, torch.device("cpu"), plans)
    results, every_round = {}, {}
    for round_ in range(rounds):
        for name in trainers:
            cmd = [sys.executable, __file__, "-d", str(dataset_id), "-p", plans, "--device", device,
                   "--steps", str(steps), "--warmup", str(warmup), "--workdir", str(workdir), "--child", name]
            cmd += (["--compile"] if compile else []) + (["--glibc-allocator"] if glibc_allocator else [])
            out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
            if out.returncode != 0:
                print(f"{name}: failed\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            every_round.setdefault(name, []).append(r["median_s"])
            if name not in results or r["median_s"] < results[name]["median_s"]:
                results[name] = r
            print(f"round {round_ + 1}/{rounds}  {name:<24} {r['median_s'] * 1000:9.1f} ms/it   "
                  f"peak {r['peak_mb']:8.0f} MB", flush=True)
    return {name: {**r, "rounds_s": every_round[name]} for name, r in results.items()}


def print_ratios(results: dict, device: str, steps: int, warmup: int, rounds: int = 1,
                 compiled: bool = False) -> None:
    import os
    import torch
    stock = results.get("nnUNetTrainer")
    if not stock:
        sys.exit("stock nnUNetTrainer did not run; no ratios")
    device_name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"\ndevice: {device_name}; patch {stock['patch']}, batch {stock['batch']}; "
          f"{'compiled' if compiled else 'eager'}; median of {steps} steps after {warmup} warm-up, fastest of "
          f"{rounds} round(s); memory: peak RSS during the steps (CPU) or CUDA max allocated")
    print(f"{'trainer':<24} {'ms/it':>9} {'time ratio':>11} {'peak MB':>9} {'mem ratio':>10}  target")
    for name, r in results.items():
        ratio = r["median_s"] / stock["median_s"]
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target}  {'met' if ratio <= target else 'MISSED'}"
        print(f"{name:<24} {r['median_s'] * 1000:9.1f} {ratio:11.2f} {r['peak_mb']:9.0f} "
              f"{r['peak_mb'] / stock['peak_mb']:10.2f}  {verdict}")


if __name__ == "__main__":
    main()
