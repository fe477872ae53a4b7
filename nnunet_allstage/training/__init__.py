"""The plugin's trainers, one module per stage family (``mae``: stage 1; ``segmentation``: stage 2, the
baseline and the Table-4/Fig.-5 fine-tuning rows; ``codistillation``: stages 3 and 4 and their ablations).

Each class is written out in its family's module, its short-schedule variants too (``_1epoch``, ``_5epochs``,
``_50epochs``, as nnU-Net names its own), so ``git grep`` finds every name ``-tr`` accepts. A variant sets
``schedule_epochs``; a stage starts from its predecessor's variant of the same schedule.
"""
from __future__ import annotations

SCHEDULES = {"1epoch": 1, "5epochs": 5, "50epochs": 50}  # --schedule name: epochs


def schedule_suffix(epochs: int | None) -> str:
    """The class-name suffix of the variant with this many epochs ('' for the full schedule)."""
    if epochs is None:
        return ""
    return "_" + next(name for name, n in SCHEDULES.items() if n == epochs)


def trainer_classes() -> dict[str, type]:
    """Every plugin trainer by name (imports nnU-Net's training stack, hence not at module level)."""
    from nnunet_allstage.training import codistillation, mae, segmentation
    from nnunet_allstage.training.base import AllStageTrainerBase
    return {name: obj for module in (mae, segmentation, codistillation) for name, obj in vars(module).items()
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
