"""The short-schedule variant of every trainer, named as nnU-Net names its own (``nnUNetTrainer_5epochs``): one line
each, so that ``git grep`` finds every name ``-tr`` accepts. A stage starts from its predecessor's variant of the same
schedule (``--schedule 1epoch`` trains the whole chain in one epoch per stage)."""
# ruff: noqa: E701  (one class a line on purpose)
from __future__ import annotations

from nnunet_allstage.training.codistillation import (
    AllStageTrainer, AllStageTrainer_Binary, AllStageTrainer_ModelDistNoMAE_Binary, AllStageTrainer_NoDataRefinement,
    AllStageTrainer_NoDataRefinement_Binary, AllStageTrainer_NoHyperTeacher, AllStageTrainer_NoHyperTeacher_Binary,
    AllStageTrainer_NoKD)
from nnunet_allstage.training.distribution_approximation import AllStageMAEDATrainer, AllStageMAEDATrainer_Binary
from nnunet_allstage.training.mae import AllStageMAETrainer
from nnunet_allstage.training.segmentation import (
    AllStageDAFinetuneTrainer, AllStageDAFinetuneTrainer_Binary, AllStageDAHyperTrainer, AllStageDAHyperTrainer_Binary,
    AllStageDropoutTrainer, AllStageHyperTrainer, AllStageHyperTrainer_Binary, AllStageMAEFinetuneTrainer)


class AllStageMAETrainer_1epoch(AllStageMAETrainer): schedule_epochs = 1
class AllStageMAETrainer_5epochs(AllStageMAETrainer): schedule_epochs = 5

class AllStageDropoutTrainer_1epoch(AllStageDropoutTrainer): schedule_epochs = 1
class AllStageDropoutTrainer_5epochs(AllStageDropoutTrainer): schedule_epochs = 5

class AllStageHyperTrainer_1epoch(AllStageHyperTrainer): schedule_epochs = 1
class AllStageHyperTrainer_5epochs(AllStageHyperTrainer): schedule_epochs = 5

class AllStageHyperTrainer_Binary_1epoch(AllStageHyperTrainer_Binary): schedule_epochs = 1
class AllStageHyperTrainer_Binary_5epochs(AllStageHyperTrainer_Binary): schedule_epochs = 5

class AllStageMAEFinetuneTrainer_1epoch(AllStageMAEFinetuneTrainer): schedule_epochs = 1
class AllStageMAEFinetuneTrainer_5epochs(AllStageMAEFinetuneTrainer): schedule_epochs = 5

class AllStageDAFinetuneTrainer_1epoch(AllStageDAFinetuneTrainer): schedule_epochs = 1
class AllStageDAFinetuneTrainer_5epochs(AllStageDAFinetuneTrainer): schedule_epochs = 5

class AllStageDAFinetuneTrainer_Binary_1epoch(AllStageDAFinetuneTrainer_Binary): schedule_epochs = 1
class AllStageDAFinetuneTrainer_Binary_5epochs(AllStageDAFinetuneTrainer_Binary): schedule_epochs = 5

class AllStageDAHyperTrainer_1epoch(AllStageDAHyperTrainer): schedule_epochs = 1
class AllStageDAHyperTrainer_5epochs(AllStageDAHyperTrainer): schedule_epochs = 5

class AllStageDAHyperTrainer_Binary_1epoch(AllStageDAHyperTrainer_Binary): schedule_epochs = 1
class AllStageDAHyperTrainer_Binary_5epochs(AllStageDAHyperTrainer_Binary): schedule_epochs = 5

class AllStageMAEDATrainer_1epoch(AllStageMAEDATrainer): schedule_epochs = 1
class AllStageMAEDATrainer_5epochs(AllStageMAEDATrainer): schedule_epochs = 5

class AllStageMAEDATrainer_Binary_1epoch(AllStageMAEDATrainer_Binary): schedule_epochs = 1
class AllStageMAEDATrainer_Binary_5epochs(AllStageMAEDATrainer_Binary): schedule_epochs = 5

class AllStageTrainer_1epoch(AllStageTrainer): schedule_epochs = 1
class AllStageTrainer_5epochs(AllStageTrainer): schedule_epochs = 5

class AllStageTrainer_Binary_1epoch(AllStageTrainer_Binary): schedule_epochs = 1
class AllStageTrainer_Binary_5epochs(AllStageTrainer_Binary): schedule_epochs = 5

class AllStageTrainer_NoKD_1epoch(AllStageTrainer_NoKD): schedule_epochs = 1
class AllStageTrainer_NoKD_5epochs(AllStageTrainer_NoKD): schedule_epochs = 5

class AllStageTrainer_NoDataRefinement_1epoch(AllStageTrainer_NoDataRefinement): schedule_epochs = 1
class AllStageTrainer_NoDataRefinement_5epochs(AllStageTrainer_NoDataRefinement): schedule_epochs = 5

class AllStageTrainer_NoHyperTeacher_1epoch(AllStageTrainer_NoHyperTeacher): schedule_epochs = 1
class AllStageTrainer_NoHyperTeacher_5epochs(AllStageTrainer_NoHyperTeacher): schedule_epochs = 5

class AllStageTrainer_ModelDistNoMAE_Binary_1epoch(AllStageTrainer_ModelDistNoMAE_Binary): schedule_epochs = 1
class AllStageTrainer_ModelDistNoMAE_Binary_5epochs(AllStageTrainer_ModelDistNoMAE_Binary): schedule_epochs = 5

class AllStageTrainer_NoDataRefinement_Binary_1epoch(AllStageTrainer_NoDataRefinement_Binary): schedule_epochs = 1
class AllStageTrainer_NoDataRefinement_Binary_5epochs(AllStageTrainer_NoDataRefinement_Binary): schedule_epochs = 5

class AllStageTrainer_NoHyperTeacher_Binary_1epoch(AllStageTrainer_NoHyperTeacher_Binary): schedule_epochs = 1
class AllStageTrainer_NoHyperTeacher_Binary_5epochs(AllStageTrainer_NoHyperTeacher_Binary): schedule_epochs = 5
