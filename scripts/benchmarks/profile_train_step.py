#!/usr/bin/env python
"""Where a training step's time goes: one step of each trainer under torch.profiler (the top operators by their
own time), then each piece the plugin adds to a stock step, timed alone on the same batch and network sizes and
given as a share of the stock step: modality dropout's sampling, re-zeroing, patch masking, the code lookup, the
dynamic hyper head against the static output layer it replaces, the reconstruction and MAD losses, and stage 4's
three networks (g, the frozen teacher to its input, the student).

    python scripts/profile_train_step.py                              # synthetic default of bench_train_step
    python scripts/profile_train_step.py -d 902 -p nnUNetPlans_4mm   # a planned dataset of yours
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import copy_batch, make_trainer, predecessor_checkpoints, ready_to_step, use_dataset  # noqa: E402

PROFILED = ["nnUNetTrainer", "AllStageMAETrainer", "AllStageHyperTrainer", "AllStageTrainer"]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def ready_trainer(dataset_id: int, name: str, plans: str):
    trainer = make_trainer(dataset_id, name, torch.device("cpu"), plans)
    trainer.initialize()
    return trainer, ready_to_step(trainer)


def profile_step(trainer, batch, top: int) -> float:
    from torch.profiler import ProfilerActivity, profile
    step = timed(lambda: trainer.train_step(copy_batch(batch)), 2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_step(copy_batch(batch))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48))
    return step


def added_pieces(stage4, batch, repeats: int) -> dict[str, float]:
    """Seconds of each piece the plugin adds, alone, at this dataset's patch and batch size."""
    from nnunet_allstage.losses import multi_level_mad, reconstruction_loss
    from nnunet_allstage.masking import mask_input, modality_dropout, zero_missing
    from nnunet_allstage.networks import code_indices, forward_with_features, unwrap
    cfg = stage4.allstage_config
    data = batch["data"].float()
    target = batch["target"]
    available = stage4.batch_availability(batch["keys"])
    code = modality_dropout(available)
    student = unwrap(stage4.network)
    head = student.hyper_head
    features = torch.randn(data.shape[0], head.feature_proj[0].num_channels, *data.shape[2:], requires_grad=True)
    with torch.no_grad():
        bottleneck = student.encoder(data)[-1]
    static = torch.nn.Conv3d(features.shape[1], head.num_classes, 1) if data.ndim == 5 else \
        torch.nn.Conv2d(features.shape[1], head.num_classes, 1)
    embedding = student.code_table[code_indices(code)][:1]

    def fwd_bwd(module_call):
        def run():
            out = module_call()
            (out[0] if isinstance(out, (list, tuple)) else out).float().mean().backward()
        return run

    with torch.no_grad():
        teacher_out, teacher_skips = forward_with_features(stage4.teacher, data, torch.ones_like(available))
        student_out, student_skips = forward_with_features(stage4.network, data, code)
    levels = slice(len(student_skips) - cfg.kd_num_levels, None)
    student_skips = [s.detach().requires_grad_(True) for s in student_skips]
    recovered_in = data.clone().requires_grad_(True)
    return {
        "MDrop sampling (codes for the batch)": timed(lambda: modality_dropout(available), repeats),
        "re-zeroing missing channels": timed(lambda: zero_missing(data, available), repeats),
        "patch masking (MASK(x), ratio 0.875)": timed(lambda: mask_input(data, code, cfg.mask_patch_size,
                                                                         cfg.mask_ratio), repeats),
        "code lookup (table row per sample)": timed(lambda: student.code_table[code_indices(code)], repeats),
        "hyper head fwd+bwd": timed(fwd_bwd(lambda: head(features, bottleneck, embedding)), repeats),
        "static 1x1 output layer it replaces, fwd+bwd": timed(fwd_bwd(lambda: static(features)), repeats),
        "reconstruction loss (Eq. 1)": timed(lambda: reconstruction_loss(data, data, available), repeats),
        "MAD over the deepest levels fwd+bwd": timed(fwd_bwd(lambda: multi_level_mad(
            student_skips[levels], teacher_skips[levels], teacher_out[0], cfg.kd_pool_size, True)), repeats),
        "stage 4: g fwd+bwd": timed(fwd_bwd(lambda: stage4.recovery(data)), repeats),
        "stage 4: frozen teacher fwd + bwd to its input": timed(fwd_bwd(lambda: forward_with_features(
            stage4.teacher, recovered_in, torch.ones_like(available))[0]), repeats),
        "stage 4: student fwd+bwd (with its loss)": timed(fwd_bwd(lambda: stage4.loss(
            forward_with_features(stage4.network, data, code)[0], target)), repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", dest="dataset_id", type=int, help="a planned dataset (default: synthetic)")
    parser.add_argument("-p", default="nnUNetPlans")
    parser.add_argument("--workdir", default="bench_output")
    parser.add_argument("--top", type=int, default=12, help="operators listed per trainer")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import os
    use_dataset(args)
    os.environ["nnUNet_n_proc_DA"] = "0"
    predecessor_checkpoints(args.dataset_id, torch.device("cpu"), args.p)
    steps = {}
    for name in PROFILED:
        trainer, batch = ready_trainer(args.dataset_id, name, args.p)
        print(f"\n=== {name}: top operators of one step by their own CPU time")
        steps[name] = profile_step(trainer, batch, args.top)
        if name == "AllStageTrainer":
            stage4, stage4_batch = trainer, batch
    stock = steps["nnUNetTrainer"]
    print(f"\n{'trainer step':<52} {'ms':>8} {'x stock':>8}")
    for name, seconds in steps.items():
        print(f"{name:<52} {seconds * 1000:8.1f} {seconds / stock:8.2f}")
    print(f"\n{'piece added by the plugin, timed alone':<52} {'ms':>8} {'% stock':>8}")
    for name, seconds in added_pieces(stage4, stage4_batch, args.repeats).items():
        print(f"{name:<52} {seconds * 1000:8.1f} {100 * seconds / stock:7.1f}%")
    cm = stage4.configuration_manager
    print(f"\npatch {list(cm.patch_size)}, batch {cm.batch_size}, {torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
