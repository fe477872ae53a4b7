"""Stage 2 (the hyper-network segmentation model f) and the nnU-Net + modality-dropout baseline."""
from __future__ import annotations

from nnunet_allstage.networks import build_hyper_network, transfer_weights
from nnunet_allstage.text_embeddings import clip_table
from nnunet_allstage.training.base import PREDECESSOR_ROLES, AllStageTrainerBase, SegmentationOptimizerMixin, unwrap


class AllStageDropoutTrainer(AllStageTrainerBase):
    """Baseline: nnU-Net's planned U-Net trained with modality dropout and re-zeroing; no MAE, no hyper head."""

    stage_name = "baseline (nnU-Net + modality dropout)"


class InitFromStageMixin:
    """Initialise the network from an earlier stage's checkpoint: every tensor whose name and shape match, the
    output layers (``seg_layers``) excepted."""

    init_role = "pretrained MAE"
    init_trainer = "AllStageMAETrainer"

    @classmethod
    def predecessor_names(cls, config) -> list[str]:
        return [cls.init_trainer]

    def load_predecessors(self) -> None:
        weights, path = self.load_predecessor(self.init_role, self.init_trainer)
        loaded, skipped = transfer_weights(weights, unwrap(self.network))
        left = ", ".join(sorted({s.rsplit(".", 2)[0] for s in skipped}))
        self.print_to_log_file(f"initialised from stage {PREDECESSOR_ROLES[self.init_role]} {path}: {loaded} tensors "
                               f"loaded, {len(skipped)} left as initialised ({left})")


class HyperNetworkMixin:
    """The network is the hyper-network U-Net; its embedding table (CLIP prompts, or the binary codes) is filled
    after it is built."""

    binary_code = False  # this trainer's network embeds its codes with the binary-code MLP instead of CLIP
    own_options = ("clip_model", "clip_pretrained", "clip_weights")

    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels,
                                   num_output_channels, enable_deep_supervision: bool = True):
        # a classmethod: nnU-Net's trainer and predictor call it on the class, as they call a staticmethod
        return build_hyper_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision, cls.binary_code)

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


class AllStageHyperTrainer_Binary(AllStageHyperTrainer):
    """Stage 2 with the binary-code MLP instead of CLIP (the paper's Fig. 5 ablation); needs no CLIP."""

    binary_code = True


# ---------------------------------------------------------------------------------------- ablations (paper Sec. 4.4)
class AllStageMAEFinetuneTrainer(InitFromStageMixin, SegmentationOptimizerMixin, AllStageTrainerBase):
    """Table 4 "MAE baseline": the planned U-Net (static head) initialised from stage 1, trained with MDrop."""

    stage_name = "ablation: MAE baseline (static head from stage 1)"


class AllStageDAFinetuneTrainer(AllStageMAEFinetuneTrainer):
    """Table 4 "+distribution approximation" = Table 5 (a) = Fig. 5 baseline: the planned U-Net (static head)
    initialised from stage 3, trained with MDrop."""

    stage_name = "ablation: +distribution approximation (static head from stage 3)"
    init_role = "approximated MAE"
    init_trainer = "AllStageMAEDATrainer"


class AllStageDAFinetuneTrainer_Binary(AllStageDAFinetuneTrainer):
    """Table 5 (a) with binary codes throughout: initialised from the stage 3 that had the binary-code teacher."""

    init_trainer = "AllStageMAEDATrainer_Binary"


class AllStageDAHyperTrainer(AllStageHyperTrainer):
    """Table 4 "+CLIP-driven hyper-network" and Fig. 5: the hyper-network initialised from stage 3, MDrop, no
    teacher."""

    stage_name = "ablation: +hyper-network (from stage 3, no teacher)"
    init_role = "approximated MAE"
    init_trainer = "AllStageMAEDATrainer"


class AllStageDAHyperTrainer_Binary(AllStageHyperTrainer_Binary):
    """Fig. 5's binary-code bar: the binary-code hyper-network initialised from stage 3, MDrop, no teacher."""

    stage_name = "ablation: +binary-code hyper-network (from stage 3, no teacher)"
    init_role = "approximated MAE"
    init_trainer = "AllStageMAEDATrainer_Binary"
