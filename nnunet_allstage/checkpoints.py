"""Reading checkpoints without running code, and what a checkpoint says about how it was trained.

``torch.load(weights_only=False)``, which stock nnU-Net uses, unpickles arbitrary Python objects: a checkpoint
file from elsewhere can run code when it is loaded. We load with ``weights_only=True`` and allow only the numpy
scalar and dtype types that nnU-Net's checkpoints hold besides tensors and plain data.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.private_api import numpy_checkpoint_globals

RANDOM_CLIP_MARK = "RANDOM-WEIGHT CLIP"  # in the code-table description of a random-weight CLIP run


def safe_load(path: str | os.PathLike) -> dict:
    """A checkpoint's content on the CPU (a GPU checkpoint loads on a CPU machine), with nothing executed."""
    path = Path(path)
    if not path.is_file():
        raise AllStageError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(numpy_checkpoint_globals()):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError or others depending on the content
        reason = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        raise AllStageError(f"refusing to load {path}: it is not a checkpoint of tensors and plain data ({reason}). "
                            f"Only load checkpoints you trust; nnU-Net's own loader would execute such content") \
            from None
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise AllStageError(f"{path} is not an nnU-Net checkpoint (no 'network_weights')")
    return checkpoint


def provenance(checkpoint: dict) -> dict:
    """How the checkpoint was trained: stage, resolved options and where the modality-code table came from."""
    allstage = checkpoint.get("allstage", {})
    return {"trainer": checkpoint.get("trainer_name"), "stage": allstage.get("stage"),
            "options": allstage.get("options", {}), "code_table": allstage.get("code_table")}


def is_random_clip(record: dict) -> bool:
    return RANDOM_CLIP_MARK in (record.get("code_table") or "")


def load_predictor(folder: Path, fold, checkpoint_name: str, device: torch.device, tta: bool):
    """nnU-Net's predictor for one fold of a trained model folder, its checkpoint loaded with `safe_load`
    (what nnUNetPredictor.initialize_from_trained_model_folder does, minus the unsafe load). Returns
    (predictor, provenance)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    checkpoint = safe_load(folder / f"fold_{fold}" / checkpoint_name)
    dataset_json = load_json(str(folder / "dataset.json"))
    plans_manager = PlansManager(load_json(str(folder / "plans.json")))
    configuration_manager = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    trainer_name = checkpoint["trainer_name"]
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    if trainer_class is None:
        raise AllStageError(f"trainer {trainer_name} of {folder} not found; set nnUNet_extTrainer (eval \"$("
                            f"nnunet-allstage env)\")")
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager, determine_num_input_channels(plans_manager, configuration_manager,
                                                                           dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=tta, device=device, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, [checkpoint["network_weights"]],
                                    dataset_json, trainer_name, checkpoint.get("inference_allowed_mirroring_axes"))
    return predictor, provenance(checkpoint)
