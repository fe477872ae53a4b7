"""All plugin trainer classes; trainers/nnunet_allstage_trainers.py re-exports this module.

Short-schedule variants are named as nnU-Net names its own (``_1epoch``, ``_5epochs``, ``_50epochs``); a stage
finds its predecessor with the same suffix.
"""
from nnunet_allstage.training.base import SCHEDULE_SUFFIXES
from nnunet_allstage.training.codistillation import (
    AllStageMAEDATrainer, AllStageMAEDATrainer_Binary, AllStageTrainer, AllStageTrainer_Binary,
    AllStageTrainer_ModelDistNoMAE_Binary, AllStageTrainer_NoDataRefinement, AllStageTrainer_NoDataRefinement_Binary,
    AllStageTrainer_NoHyperTeacher, AllStageTrainer_NoHyperTeacher_Binary, AllStageTrainer_NoKD)
from nnunet_allstage.training.mae import AllStageMAETrainer
from nnunet_allstage.training.segmentation import (
    AllStageDAFinetuneTrainer, AllStageDAFinetuneTrainer_Binary, AllStageDAHyperTrainer, AllStageDAHyperTrainer_Binary,
    AllStageDropoutTrainer, AllStageHyperTrainer, AllStageHyperTrainer_Binary, AllStageMAEFinetuneTrainer)

BASE_TRAINERS = [AllStageMAETrainer, AllStageHyperTrainer, AllStageHyperTrainer_Binary, AllStageDropoutTrainer,
                 AllStageMAEDATrainer, AllStageMAEDATrainer_Binary, AllStageTrainer, AllStageTrainer_Binary,
                 AllStageMAEFinetuneTrainer, AllStageDAFinetuneTrainer, AllStageDAFinetuneTrainer_Binary,
                 AllStageDAHyperTrainer, AllStageDAHyperTrainer_Binary, AllStageTrainer_NoKD,
                 AllStageTrainer_NoDataRefinement, AllStageTrainer_NoHyperTeacher, AllStageTrainer_ModelDistNoMAE_Binary,
                 AllStageTrainer_NoDataRefinement_Binary, AllStageTrainer_NoHyperTeacher_Binary]

__all__ = [cls.__name__ for cls in BASE_TRAINERS]


def _schedule_variant(base: type, suffix: str) -> type:
    # the epoch count itself is read from the suffix by AllStageTrainerBase.__init__
    name = base.__name__ + suffix
    cls = type(name, (base,), {"__module__": __name__, "__qualname__": name,
                               "__doc__": f"{base.__name__} with {SCHEDULE_SUFFIXES[suffix]} epoch(s)."})
    return cls


for _base in BASE_TRAINERS:
    for _suffix in SCHEDULE_SUFFIXES:
        _cls = _schedule_variant(_base, _suffix)
        globals()[_cls.__name__] = _cls
        __all__.append(_cls.__name__)
