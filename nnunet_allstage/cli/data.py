"""Sub-commands that make and prepare data: env, convert-brats, convert-folder, plan, synthetic."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from nnunet_allstage.errors import AllStageError


def _add_conversion_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset-id", "-d", type=int, required=True, help="nnU-Net dataset id (1-999)")
    p.add_argument("--name", help="dataset name after DatasetXXX_ (default: from the source)")
    p.add_argument("--split-file", help="JSON with train/val/test lists, or a shipped split: brats2018 (split 3, "
                                        "199:29:57) or brats2020 (219:50:100). Default: seeded random ~70:10:20")
    p.add_argument("--fm-ratio", type=float, help="simulate missing modalities: this fraction of the training "
                                                  "subjects (validation subjects separately) keeps every modality (default: keep the data as it is)")
    p.add_argument("--labelled-fraction", type=float, metavar="F",
                   help="simulate scarce labels: keep the labels of round(F * N) training subjects (at least one), "
                        "drop the others' (seeded, recorded); they stay training cases for stages 1 and 3")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulations and of a random split")
    p.add_argument("--skip-bad", action="store_true", help="skip (and list) cases that fail a check")
    p.add_argument("--force", action="store_true", help="replace an existing dataset with this id")
    p.add_argument("-np", type=int, default=None, help="processes (default: nnUNet_def_n_proc or the core count)")


def _conversion_kwargs(args) -> dict:
    from nnunet_allstage.conversion.dataset import default_num_processes
    from nnunet_allstage.conversion.splits import load_split
    return dict(dataset_id=args.dataset_id, split=load_split(args.split_file) if args.split_file else None,
                split_seed=args.seed, fm_ratio=args.fm_ratio, seed=args.seed, skip_bad=args.skip_bad,
                force=args.force, num_processes=args.np or default_num_processes(),
                labelled_fraction=args.labelled_fraction)


def cmd_env(args) -> None:
    from nnunet_allstage.environment import env_lines
    print("\n".join(env_lines(Path(args.base).resolve() if args.base else None)))


def cmd_convert_brats(args) -> None:
    from nnunet_allstage.conversion import convert_brats
    convert_brats(args.src, year=args.year, name=args.name, unlabelled_src=args.unlabelled_src,
                  keep_labels=args.keep_labels, **_conversion_kwargs(args))


def _parse_assignments(items: list[str] | None, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise AllStageError(f"{what} {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_convert_folder(args) -> None:
    from nnunet_allstage.conversion import convert_folder
    config = {}
    if args.config:
        try:
            config = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise AllStageError(f"--config {args.config}: {e}") from None
    if args.modality:
        config["modalities"] = _parse_assignments(args.modality, "--modality")
    if args.label:
        config["label"] = args.label
    if args.labels:
        try:
            config["labels"] = {k: int(v) for k, v in _parse_assignments(args.labels, "--labels").items()}
        except ValueError:
            raise AllStageError("--labels values must be integers, e.g. --labels background=0 lesion=1") from None
    if not args.name and not config.get("name"):
        raise AllStageError("convert-folder needs --name (or 'name' in --config)")
    convert_folder(args.src, config, name=args.name or config["name"], allow_unlabelled=args.allow_unlabelled,
                   **_conversion_kwargs(args))


def cmd_plan(args) -> None:
    from nnunet_allstage.planning import plan_dataset
    from nnunet_allstage.conversion.dataset import default_num_processes
    plan_dataset(args.dataset_id, configurations=args.c, planner=args.pl, target_spacing=args.target_spacing,
                 plans_name=args.p, num_processes=args.np or default_num_processes(),
                 gpu_memory_target_gb=args.gpu_memory_target)


def cmd_synthetic(args) -> None:
    from nnunet_allstage.synthetic import write_synthetic_brats
    out = write_synthetic_brats(args.output, num_cases=args.num_cases, seed=args.seed)
    print(f"wrote {args.num_cases} synthetic cases (BraTS 2020 layout) to {out}")


def add_commands(sub) -> None:
    p = sub.add_parser("env", help="print the export lines for nnUNet_extTrainer (and unset nnU-Net folders)")
    p.add_argument("--base", help="folder for nnUNet_raw/preprocessed/results when unset (default: here)")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("convert-brats", help="convert a BraTS training folder (2018-2021, 2023+) to nnU-Net")
    p.add_argument("--src", required=True, help="the unpacked BraTS training folder")
    p.add_argument("--year", help="BraTS year (default: detected from the file names)")
    p.add_argument("--unlabelled-src", metavar="DIR",
                   help="a BraTS folder of any year whose cases have no labels (e.g. a validation set): added as "
                        "training cases without labels, which stages 1 and 3 learn from and the segmentation "
                        "trainers never sample")
    p.add_argument("--keep-labels", action="store_true",
                   help="cases of --unlabelled-src that do have a label file keep it (instead of an error)")
    _add_conversion_options(p)
    p.set_defaults(func=cmd_convert_brats)

    p = sub.add_parser("convert-folder", help="convert your own data: one folder per case, a file pattern per "
                                              "modality")
    p.add_argument("--src", required=True, help="folder holding one sub-folder per case")
    p.add_argument("--modality", action="append", metavar="NAME=GLOB",
                   help="a modality and its file pattern inside a case folder ({case} = folder name), in channel "
                        "order, e.g. --modality T2='*_t2.nii.gz' --modality ADC='*_adc.nii.gz'")
    p.add_argument("--label", metavar="GLOB", help="label file pattern, e.g. '*_seg.nii.gz'")
    p.add_argument("--labels", action="append", metavar="NAME=VALUE",
                   help="label names and values (default background=0 foreground=1)")
    p.add_argument("--config", help="JSON with 'modalities' {name: glob}, 'label', 'labels', optional "
                                    "'regions_class_order', 'label_map', 'name'")
    p.add_argument("--allow-unlabelled", action="store_true",
                   help="a case without a label file becomes a training case without labels (stages 1 and 3 "
                        "learn from it) instead of an error")
    _add_conversion_options(p)
    p.set_defaults(func=cmd_convert_folder)

    p = sub.add_parser("plan", help="nnU-Net plan-and-preprocess, splits and availability checks")
    p.add_argument("-d", dest="dataset_id", type=int, required=True)
    p.add_argument("-c", nargs="+", default=["3d_fullres"], help="configurations (default 3d_fullres)")
    p.add_argument("-pl", default="ExperimentPlanner",
                   help="nnU-Net planner, e.g. nnUNetPlannerResEncM (default ExperimentPlanner)")
    p.add_argument("-p", default=None, help="plans name (default: the planner's, plus the spacing when "
                                            "--target-spacing is given)")
    p.add_argument("--target-spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="plan 3d_fullres at this spacing in mm (e.g. 3 3 3 for CPU runs on BraTS)")
    p.add_argument("--gpu-memory-target", type=float, default=None, help="GB, as nnU-Net's -gpu_memory_target")
    p.add_argument("-np", type=int, default=None, help="processes")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("synthetic", help="write a small synthetic BraTS-2020-layout dataset")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-n", "--num-cases", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synthetic)
