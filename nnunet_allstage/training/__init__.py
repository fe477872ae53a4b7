"""The plugin's trainers, one module per stage family: ``mae`` (stage 1), ``segmentation`` (stage 2, the
nnU-Net + MDrop baseline, the Table-4/Fig.-5 fine-tuning rows), ``distribution_approximation`` (stage 3),
``codistillation`` (stage 4 and its ablations); ``schedules`` holds every class's short-schedule variants
(``_1epoch``, ``_5epochs``, as nnU-Net names its own), one line each, so ``git grep`` finds every name ``-tr``
accepts. A variant sets ``schedule_epochs``; a stage starts from its predecessor's variant of the same schedule.
"""
from __future__ import annotations

from nnunet_allstage.config import SCHEDULES, schedule_suffix

__all__ = ["SCHEDULES", "schedule_suffix", "trainer_class", "trainer_classes", "training_chain"]


def trainer_classes() -> dict[str, type]:
    """Every plugin trainer by name (imports nnU-Net's training stack, hence not at module level)."""
    from nnunet_allstage.training import codistillation, distribution_approximation, mae, schedules, segmentation
    from nnunet_allstage.training.base import AllStageTrainerBase
    modules = (mae, segmentation, distribution_approximation, codistillation, schedules)
    return {name: obj for module in modules for name, obj in vars(module).items()
            if isinstance(obj, type) and issubclass(obj, AllStageTrainerBase) and obj.__module__ == module.__name__
            and name.startswith("AllStage")}


def trainer_class(name: str) -> type:
    from nnunet_allstage.errors import AllStageError
    classes = trainer_classes()
    if name not in classes:
        raise AllStageError(f"no nnunet-allstage trainer named {name}")
    return classes[name]


def training_chain(trainer: str, config) -> list[str]:
    """The trainers to run, in order, to train ``trainer`` from nothing: its predecessors (each once, before
    whatever starts from it), then itself. The stage order lives in the classes' predecessor_names only."""
    order: list[str] = []

    def visit(name: str) -> None:
        for predecessor in trainer_class(name).predecessor_names(config):
            visit(predecessor)
        if name not in order:
            order.append(name)
    visit(trainer)
    return order
