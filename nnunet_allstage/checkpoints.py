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


def weights_digest(state_dict: dict) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and values: the weights' identity, whatever the file's
    name, time or place (a copied model folder keeps it, a retrained checkpoint changes it)."""
    import hashlib
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}".encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                      if value.numel() else b"")
    return digest.hexdigest()
