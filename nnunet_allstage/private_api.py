"""The one door to private attributes of nnU-Net, torch and numpy that the plugin cannot do without.

Nothing else in the package touches a private name of another library. ``PRIVATE_ATTRIBUTES`` lists each with
where it lives; tests/test_private_api.py checks every one against the installed versions, so an upgrade that
removes or renames one fails that test, naming the attribute, instead of failing somewhere in a training run.
"""
from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

PRIVATE_ATTRIBUTES = {
    "nnUNetTrainer.my_init_kwargs": "the constructor arguments nnU-Net's checkpoints store (init_args)",
    "nnUNetTrainer._best_ema": "the best EMA pseudo Dice nnU-Net's checkpoints store",
    "MetaLogger.local_logger.my_fantastic_logging": "nnU-Net's per-epoch log values (we add our own keys)",
    "torch OptimizedModule._orig_mod": "the module inside a torch.compile wrapper",
    "numpy _core.multiarray._reconstruct": "an array pickle global that nnU-Net's checkpoints need",
    "nnunetv2...nnUNetTrainer module's DDP": "the DDP class nnUNetTrainer.initialize wraps with (CUDA device ids)",
    "nnUNetTrainer._do_i_compile": "nnU-Net's rule for compiling the network (device, OS, nnUNet_compile)",
}


def trainer_checkpoint_fields(trainer) -> dict:
    """The fields of nnU-Net's checkpoint that come from private trainer attributes."""
    return {"_best_ema": trainer._best_ema, "init_args": trainer.my_init_kwargs}


def epoch_log(logger) -> dict[str, list]:
    """nnU-Net's per-epoch log store ({key: [value per epoch]}) behind its MetaLogger."""
    return logger.local_logger.my_fantastic_logging


def compiled_inner(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside a torch.compile wrapper (the module itself when not compiled)."""
    return getattr(module, "_orig_mod", module)


def nnunet_compiles(trainer) -> bool:
    """Whether nnU-Net compiles this trainer's network (on a GPU by default; never on the CPU or mps)."""
    return trainer._do_i_compile()


@contextmanager
def nnunet_compiling_everywhere():
    """nnU-Net's compile rule switched on for every device (benchmarks of compiled steps on the CPU)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    original = nnUNetTrainer._do_i_compile
    nnUNetTrainer._do_i_compile = lambda self: True
    try:
        yield
    finally:
        nnUNetTrainer._do_i_compile = original


def numpy_checkpoint_globals() -> list:
    """The numpy objects that nnU-Net's checkpoints pickle besides tensors (for torch.load(weights_only=True))."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType")]
    return [core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]


@contextmanager
def nnunet_ddp_on_cpu(device: torch.device):
    """nnUNetTrainer.initialize wraps the network in DDP with ``device_ids=[rank]``, which only CUDA modules take.
    On the CPU (gloo; our tests) the wrapper it finds is DDP without device ids; on a GPU nothing changes."""
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as module
    if device.type != "cpu":
        yield
        return
    original = module.DDP
    module.DDP = lambda network, device_ids=None, **kwargs: original(network, **kwargs)
    try:
        yield
    finally:
        module.DDP = original


def ddp(module: torch.nn.Module, device: torch.device, rank: int) -> torch.nn.Module:
    """DDP as nnU-Net wraps its network: device ids on a GPU, none on the CPU."""
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(module, device_ids=[rank] if device.type == "cuda" else None)
