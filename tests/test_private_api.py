"""Every private attribute of another library that the plugin uses (nnunet_allstage.private_api) still exists in
the installed versions; an upgrade that removes one fails here, naming it."""
import inspect

import numpy as np
import pytest
import torch

from nnunet_allstage import private_api


def test_the_list_names_every_private_name_the_module_touches():
    """Read from private_api.py's own code: every attribute it reads whose name starts with an underscore (also
    through getattr with a string), and nnU-Net's non-underscore internals it reaches into, are listed."""
    import ast
    tree = ast.parse(inspect.getsource(private_api))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {n.args[1].value for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") ==
             "getattr" and len(n.args) > 1 and isinstance(n.args[1], ast.Constant)}
    private = {name for name in used if name.startswith("_") and not name.startswith("__")}
    internals = {name for name in used if name in ("my_init_kwargs", "my_fantastic_logging", "DDP")}
    listed = {key.split(".")[-1].split("'s ")[-1] for key in private_api.PRIVATE_ATTRIBUTES}
    assert private | internals <= listed | {"_core"}, (private | internals) - listed  # _core: numpy's own rename
    assert listed <= private | internals, listed - (private | internals)


def test_nnunet_trainer_module_wraps_with_ddp_by_that_name():
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as module
    from torch.nn.parallel import DistributedDataParallel
    assert getattr(module, "DDP", None) is DistributedDataParallel, (
        "nnUNetTrainer's module no longer names DistributedDataParallel DDP: update private_api.nnunet_ddp_on_cpu")
    with private_api.nnunet_ddp_on_cpu(torch.device("cpu")):
        assert module.DDP is not DistributedDataParallel
    assert module.DDP is DistributedDataParallel


def test_nnunet_trainer_decides_compilation_by_that_name(monkeypatch):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    assert "self._do_i_compile()" in inspect.getsource(nnUNetTrainer.initialize), (
        "nnUNetTrainer.initialize no longer asks _do_i_compile: update private_api.nnunet_compiles")
    trainer = object.__new__(nnUNetTrainer)
    trainer.device = torch.device("cpu")
    trainer.print_to_log_file = lambda *a, **k: None
    monkeypatch.setenv("nnUNet_compile", "t")
    assert private_api.nnunet_compiles(trainer) is False  # nnU-Net never compiles on the CPU


@pytest.mark.parametrize("attribute", ["my_init_kwargs", "_best_ema"])
def test_nnunet_trainer_sets_the_attribute(attribute):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    source = inspect.getsource(nnUNetTrainer.__init__)
    assert f"self.{attribute} =" in source, (
        f"nnUNetTrainer.__init__ no longer sets {attribute}: private_api.trainer_checkpoint_fields needs updating")


def test_nnunet_logger_keeps_its_epoch_store(tmp_path):
    from nnunetv2.training.logging.nnunet_logger import MetaLogger
    logger = MetaLogger(str(tmp_path), False)
    logger.log("mean_fg_dice", 0.5, 0)
    store = private_api.epoch_log(logger)  # MetaLogger.local_logger.my_fantastic_logging
    assert store["mean_fg_dice"] == [0.5]


def test_torch_compile_wrapper_keeps_the_module():
    inner = torch.nn.Linear(2, 2)
    wrapped = torch.compile(inner)  # compiles lazily: nothing is compiled here
    assert hasattr(wrapped, "_orig_mod"), "torch.compile's wrapper has no _orig_mod: update private_api.compiled_inner"
    assert private_api.compiled_inner(wrapped) is inner and private_api.compiled_inner(inner) is inner


def test_numpy_checkpoint_globals_round_trip(tmp_path):
    globals_ = private_api.numpy_checkpoint_globals()  # numpy _core.multiarray._reconstruct among them
    path = tmp_path / "c.pth"
    torch.save({"ema": np.float64(0.5), "a": np.arange(3)}, path)
    with torch.serialization.safe_globals(globals_):
        back = torch.load(path, weights_only=True)
    assert back["ema"] == 0.5 and back["a"].tolist() == [0, 1, 2]


def test_nothing_else_touches_those_names():
    import re
    from pathlib import Path
    package = Path(private_api.__file__).parent
    for path in package.rglob("*.py"):
        if path.name == "private_api.py":
            continue
        text = path.read_text()
        for name in ("my_init_kwargs", "_best_ema", "my_fantastic_logging", "_orig_mod", "multiarray", "_dynamo",
                     "_do_i_compile"):
            assert not re.search(rf"\b{name}\b", text), f"{path} uses {name} outside private_api"
