"""Shared set-up of the benchmark scripts: a planned dataset (synthetic by default) and model folders with
checkpoints for any trainer, made without training (timings do not depend on the weights)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

BENCH_DATASET_ID = 980


def prepare_synthetic(workdir: Path, shape=(64, 72, 56), num_cases: int = 6, spacing=(1.0, 1.0, 1.0)) -> int:
    """Synthetic BraTS-like dataset, converted (FM ratio 0.25) and planned, under workdir (reused if there)."""
    from nnunet_allstage.conversion import convert_brats
    from nnunet_allstage.environment import apply_default_env
    from nnunet_allstage.planning import plan_dataset
    from nnunet_allstage.synthetic import write_synthetic_brats
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[name] = str(workdir / name)
    apply_default_env(workdir)
    os.environ.setdefault("nnUNet_compile", "f")
    os.environ.setdefault("NNUNET_ALLSTAGE_CLIP_PRETRAINED", "random-test-only")
    if not list((workdir / "nnUNet_preprocessed").glob(f"Dataset{BENCH_DATASET_ID}_*/nnUNetPlans.json")):
        src = write_synthetic_brats(workdir / "src", num_cases=num_cases, seed=0, shape=shape, spacing=spacing)
        convert_brats(src, dataset_id=BENCH_DATASET_ID, name="Bench", fm_ratio=0.25, force=True, num_processes=2)
        plan_dataset(BENCH_DATASET_ID, num_processes=2)
    return BENCH_DATASET_ID


def make_trainer(dataset_id: int, trainer_name: str, device: torch.device, plans: str = "nnUNetPlans",
                 configuration: str = "3d_fullres", fold=0):
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(str(dataset_id), configuration, fold, trainer_name, plans, device=device)
    return trainer


def use_dataset(args) -> Path:
    """The synthetic default when ``args.dataset_id`` is None, else the user's planned dataset, whose untrained
    predecessor checkpoints go to a scratch results folder under --workdir: in the user's own, a later
    `nnunet-allstage train` would take them for finished stages. Returns the workdir."""
    from nnunet_allstage.environment import apply_default_env
    workdir = Path(args.workdir).resolve()
    if args.dataset_id is None:
        args.dataset_id = prepare_synthetic(workdir)
    else:
        os.environ["nnUNet_results"] = str(workdir / "nnUNet_results")
        apply_default_env()
    os.environ.setdefault("NNUNET_ALLSTAGE_CLIP_PRETRAINED", "random-test-only")
    return workdir


def ready_to_step(trainer) -> dict:
    """Initialised ``trainer`` set for training steps without an epoch (predecessors are not loaded: weights do
    not change a step's cost); returns one batch of its training data loader."""
    trainer.on_train_epoch_start = lambda: None
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    trainer.network.train()
    if getattr(trainer, "recovery", None) is not None:
        trainer.recovery.train()
    return next(trainer.dataloader_train)


def copy_batch(batch: dict) -> dict:
    """A fresh copy of a batch (a training step moves and changes its tensors)."""
    return {k: (v.clone() if hasattr(v, "clone") else [t.clone() for t in v] if isinstance(v, list) else v)
            for k, v in batch.items()}


def untrained_checkpoint(dataset_id: int, trainer_name: str, device: torch.device, plans: str = "nnUNetPlans",
                         configuration: str = "3d_fullres", fold=0) -> Path:
    """checkpoint_final.pth of an initialised, untrained trainer, where nnU-Net would put it."""
    trainer = make_trainer(dataset_id, trainer_name, device, plans, configuration, fold)
    path = Path(trainer.output_folder) / "checkpoint_final.pth"
    if not path.is_file():
        trainer.initialize()
        Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
        from batchgenerators.utilities.file_and_folder_operations import save_json
        save_json(trainer.plans_manager.plans, str(Path(trainer.output_folder_base) / "plans.json"))
        save_json(trainer.dataset_json, str(Path(trainer.output_folder_base) / "dataset.json"))
        trainer.save_checkpoint(str(path))
    return path


def predecessor_checkpoints(dataset_id: int, device: torch.device, plans: str = "nnUNetPlans") -> None:
    """Untrained stage 1-3 checkpoints under their conventional names, so stages 2-4 can be built."""
    for name in ("AllStageMAETrainer", "AllStageHyperTrainer", "AllStageMAEDATrainer"):
        untrained_checkpoint(dataset_id, name, device, plans)


def prepare_models(args, trainers: list[str]) -> Path:
    """With no ``-d``: the synthetic dataset plus untrained checkpoints of ``trainers``. Returns the workdir."""
    from nnunet_allstage.environment import apply_default_env
    workdir = Path(args.workdir).resolve()
    if args.dataset_id is None:
        args.dataset_id = prepare_synthetic(workdir)
        predecessor_checkpoints(args.dataset_id, torch.device("cpu"), args.p)
        for trainer in trainers:
            untrained_checkpoint(args.dataset_id, trainer, torch.device("cpu"), args.p)
    apply_default_env(workdir)
    return workdir
