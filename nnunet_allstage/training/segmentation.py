"""Stage 2 (the hyper-network segmentation model f) and the nnU-Net + modality-dropout baseline."""
from __future__ import annotations

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_allstage.networks import HyperSegNetwork, transfer_weights
from nnunet_allstage.text_embeddings import CLIP_EMBEDDING_DIM, clip_table
from nnunet_allstage.training.base import AllStageTrainerBase, load_network_weights, unwrap


def build_hyper_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                        enable_deep_supervision: bool, binary_code: bool) -> HyperSegNetwork:
    unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                    num_output_channels, enable_deep_supervision)
    embedding_dim = num_input_channels if binary_code else CLIP_EMBEDDING_DIM
    return HyperSegNetwork(unet, num_input_channels, num_output_channels, embedding_dim, binary_code)


class AllStageDropoutTrainer(AllStageTrainerBase):
    """Baseline: nnU-Net's planned U-Net trained with modality dropout and re-zeroing; no MAE, no hyper head."""

    stage_name = "baseline (nnU-Net + modality dropout)"


class HyperNetworkMixin:
    """Fills the network's embedding table (CLIP prompts, or the binary codes) after the network is built."""

    binary_code = False
    allow_compile = False

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


class AllStageHyperTrainer(HyperNetworkMixin, AllStageTrainerBase):
    """Stage 2: the CLIP-driven hyper-network U-Net, initialised from stage 1, trained with MDrop and nnU-Net's
    region loss with deep supervision. Its final validation and nnUNetv2_predict derive each case's code from
    its zero channels."""

    stage_name = "stage 2 (hyper-network segmentation)"
    stage1_trainer = "AllStageMAETrainer"

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True):
        return build_hyper_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision, binary_code=False)

    def load_predecessors(self) -> None:
        path = self.predecessor_checkpoint(1, self.stage1_trainer)
        weights = load_network_weights(path)["network_weights"]
        loaded, skipped = transfer_weights(weights, unwrap(self.network))
        self.print_to_log_file(f"initialised from stage 1 {path}: {loaded} tensors loaded, {len(skipped)} left "
                               f"as initialised ({', '.join(sorted({s.rsplit('.', 2)[0] for s in skipped}))})")


class AllStageHyperTrainer_Binary(AllStageHyperTrainer):
    """Stage 2 with the binary-code MLP instead of CLIP (the paper's Fig. 5 ablation); needs no CLIP."""

    binary_code = True

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True):
        return build_hyper_network(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision, binary_code=True)
