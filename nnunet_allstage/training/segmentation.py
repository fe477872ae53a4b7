"""Stage 2 (the hyper-network segmentation model f) and the nnU-Net + modality-dropout baseline."""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_allstage.networks import HyperSegNetwork, transfer_weights
from nnunet_allstage.text_embeddings import CLIP_EMBEDDING_DIM, clip_table
from nnunet_allstage.training.base import AllStageTrainerBase, SegmentationOptimizerMixin, unwrap


def build_hyper_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                        enable_deep_supervision: bool, binary_code: bool) -> HyperSegNetwork:
    unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                    num_output_channels, enable_deep_supervision)
    embedding_dim = num_input_channels if binary_code else CLIP_EMBEDDING_DIM
    return HyperSegNetwork(unet, num_input_channels, num_output_channels, embedding_dim, binary_code)


class AllStageDropoutTrainer(AllStageTrainerBase):
    """Baseline: nnU-Net's planned U-Net trained with modality dropout and re-zeroing; no MAE, no hyper head."""

    stage_name = "baseline (nnU-Net + modality dropout)"


class InitFromStageMixin:
    """Initialise the network from an earlier stage's checkpoint: every tensor whose name and shape match, the
    output layers (``seg_layers``) excepted."""

    init_stage = 1
    init_trainer = "AllStageMAETrainer"

    @classmethod
    def predecessor_names(cls, config) -> list[str]:
        return [cls.init_trainer]

    def load_predecessors(self) -> None:
        weights, path = self.load_predecessor(self.init_stage, self.init_trainer)
        loaded, skipped = transfer_weights(weights, unwrap(self.network))
        self.print_to_log_file(f"initialised from stage {self.init_stage} {path}: {loaded} tensors loaded, "
                               f"{len(skipped)} left as initialised "
                               f"({', '.join(sorted({s.rsplit('.', 2)[0] for s in skipped}))})")


class HyperNetworkMixin:
    """Fills the network's embedding table (CLIP prompts, or the binary codes) after the network is built."""

    binary_code = False
    own_options = ("clip_model", "clip_pretrained", "clip_weights")

    def initialize(self):
        super().initialize()
        if not self.binary_code:
            cfg = self.allstage_config
            table, description = clip_table(self.modality_names, cfg.clip_model, cfg.clip_pretrained,
                                            cfg.clip_weights)
            unwrap(self.network).code_table.copy_(table.to(self.device))
            self.code_table_description = description
        else:
            self.code_table_description = "binary codes (no CLIP)"
        self.print_to_log_file(f"modality-code embeddings: {self.code_table_description}")

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), "code_table": self.code_table_description}


class AllStageHyperTrainer(InitFromStageMixin, HyperNetworkMixin, SegmentationOptimizerMixin, AllStageTrainerBase):
    """Stage 2: the CLIP-driven hyper-network U-Net, initialised from stage 1, trained with MDrop and nnU-Net's
    region loss with deep supervision. Its final validation and nnUNetv2_predict derive each case's code from
    its zero channels."""

    stage_name = "stage 2 (hyper-network segmentation)"

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True):
        return build_hyper_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision, binary_code=False)


class AllStageHyperTrainer_Binary(AllStageHyperTrainer):
    """Stage 2 with the binary-code MLP instead of CLIP (the paper's Fig. 5 ablation); needs no CLIP."""

    binary_code = True

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True):
        return build_hyper_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision, binary_code=True)


# ---------------------------------------------------------------------------------------- ablations (paper Sec. 4.4)
class AllStageMAEFinetuneTrainer(InitFromStageMixin, SegmentationOptimizerMixin, AllStageTrainerBase):
    """Table 4 "MAE baseline": the planned U-Net (static head) initialised from stage 1, trained with MDrop."""

    stage_name = "ablation: MAE baseline (static head from stage 1)"


class AllStageDAFinetuneTrainer(AllStageMAEFinetuneTrainer):
    """Table 4 "+distribution approximation" = Table 5 (a) = Fig. 5 baseline: the planned U-Net (static head)
    initialised from stage 3, trained with MDrop."""

    stage_name = "ablation: +distribution approximation (static head from stage 3)"
    init_stage = 3
    init_trainer = "AllStageMAEDATrainer"


class AllStageDAFinetuneTrainer_Binary(AllStageDAFinetuneTrainer):
    """Table 5 (a) with binary codes throughout: initialised from the stage 3 that had the binary-code teacher."""

    init_trainer = "AllStageMAEDATrainer_Binary"


class AllStageDAHyperTrainer(AllStageHyperTrainer):
    """Table 4 "+CLIP-driven hyper-network" and Fig. 5: the hyper-network initialised from stage 3, MDrop, no
    teacher."""

    stage_name = "ablation: +hyper-network (from stage 3, no teacher)"
    init_stage = 3
    init_trainer = "AllStageMAEDATrainer"


class AllStageDAHyperTrainer_Binary(AllStageHyperTrainer_Binary):
    """Fig. 5's binary-code bar: the binary-code hyper-network initialised from stage 3, MDrop, no teacher."""

    stage_name = "ablation: +binary-code hyper-network (from stage 3, no teacher)"
    init_stage = 3
    init_trainer = "AllStageMAEDATrainer_Binary"


# Short schedules, named as nnU-Net names its own; a stage starts from its predecessor's variant of the same schedule.
class AllStageDropoutTrainer_1epoch(AllStageDropoutTrainer):
    schedule_epochs = 1


class AllStageDropoutTrainer_5epochs(AllStageDropoutTrainer):
    schedule_epochs = 5


class AllStageDropoutTrainer_50epochs(AllStageDropoutTrainer):
    schedule_epochs = 50


class AllStageHyperTrainer_1epoch(AllStageHyperTrainer):
    schedule_epochs = 1


class AllStageHyperTrainer_5epochs(AllStageHyperTrainer):
    schedule_epochs = 5


class AllStageHyperTrainer_50epochs(AllStageHyperTrainer):
    schedule_epochs = 50


class AllStageHyperTrainer_Binary_1epoch(AllStageHyperTrainer_Binary):
    schedule_epochs = 1


class AllStageHyperTrainer_Binary_5epochs(AllStageHyperTrainer_Binary):
    schedule_epochs = 5


class AllStageHyperTrainer_Binary_50epochs(AllStageHyperTrainer_Binary):
    schedule_epochs = 50


class AllStageMAEFinetuneTrainer_1epoch(AllStageMAEFinetuneTrainer):
    schedule_epochs = 1


class AllStageMAEFinetuneTrainer_5epochs(AllStageMAEFinetuneTrainer):
    schedule_epochs = 5


class AllStageMAEFinetuneTrainer_50epochs(AllStageMAEFinetuneTrainer):
    schedule_epochs = 50


class AllStageDAFinetuneTrainer_1epoch(AllStageDAFinetuneTrainer):
    schedule_epochs = 1


class AllStageDAFinetuneTrainer_5epochs(AllStageDAFinetuneTrainer):
    schedule_epochs = 5


class AllStageDAFinetuneTrainer_50epochs(AllStageDAFinetuneTrainer):
    schedule_epochs = 50


class AllStageDAFinetuneTrainer_Binary_1epoch(AllStageDAFinetuneTrainer_Binary):
    schedule_epochs = 1


class AllStageDAFinetuneTrainer_Binary_5epochs(AllStageDAFinetuneTrainer_Binary):
    schedule_epochs = 5


class AllStageDAFinetuneTrainer_Binary_50epochs(AllStageDAFinetuneTrainer_Binary):
    schedule_epochs = 50


class AllStageDAHyperTrainer_1epoch(AllStageDAHyperTrainer):
    schedule_epochs = 1


class AllStageDAHyperTrainer_5epochs(AllStageDAHyperTrainer):
    schedule_epochs = 5


class AllStageDAHyperTrainer_50epochs(AllStageDAHyperTrainer):
    schedule_epochs = 50


class AllStageDAHyperTrainer_Binary_1epoch(AllStageDAHyperTrainer_Binary):
    schedule_epochs = 1


class AllStageDAHyperTrainer_Binary_5epochs(AllStageDAHyperTrainer_Binary):
    schedule_epochs = 5


class AllStageDAHyperTrainer_Binary_50epochs(AllStageDAHyperTrainer_Binary):
    schedule_epochs = 50
