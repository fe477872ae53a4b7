"""Stage 3: distribution approximation (Eq. 3). The stage-1 MAE continued with a segmentation signal from the frozen
stage-2 model, so that every reconstructed modality, also one absent from the data, learns to look like what the
segmentation model needs. The frozen teacher is stage 4's too."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from nnunet_allstage.losses import reconstruction_loss
from nnunet_allstage.networks import build_hyper_network, build_planned_unet, forward_with_features
from nnunet_allstage.private_api import nnunet_compiles
from nnunet_allstage.training.base import unwrap
from nnunet_allstage.training.mae import AllStageMAETrainer


def mean_over_ranks(values: list[float], is_ddp: bool) -> float:
    local = float(np.mean(values)) if values else float("nan")
    if not is_ddp:
        return local
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return float(np.nanmean(gathered))


class FrozenTeacherMixin:
    """A frozen teacher, reloaded from its checkpoint whenever the trainer starts: by default the stage-2
    hyper-network f in full-modality mode; the Table-5 (d) ablation uses a plain segmentation U-Net instead."""

    teacher_trainer = "AllStageHyperTrainer"
    teacher_is_hyper = True
    teacher_binary_code = False  # the teacher's codes: the binary-code MLP instead of CLIP
    teacher_deep_supervision = True

    def build_teacher(self) -> torch.nn.Module:
        num_inputs = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        num_outputs = self.label_manager.num_segmentation_heads
        if self.teacher_is_hyper:
            teacher = build_hyper_network(self.plans_manager, self.configuration_manager, num_inputs, num_outputs,
                                          self.teacher_deep_supervision, self.teacher_binary_code)
        else:
            teacher = build_planned_unet(self.plans_manager, self.configuration_manager, num_inputs, num_outputs,
                                         self.teacher_deep_supervision)
        weights, path = self.load_predecessor("teacher", self.teacher_trainer)
        teacher.load_state_dict(weights, strict=True)
        teacher.requires_grad_(False)
        kind = "hyper-network, full-modality code" if self.teacher_is_hyper else "plain U-Net"
        self.print_to_log_file(f"frozen teacher ({kind}) loaded from {path}")
        return self.compiled_like_the_network(teacher.to(self.device).eval())

    def compiled_like_the_network(self, module: torch.nn.Module) -> torch.nn.Module:
        """The teacher and g run every step beside the network: compiled wherever nnU-Net compiles the network."""
        if not nnunet_compiles(self):
            return module
        self.print_to_log_file(f"Using torch.compile for the {type(module).__name__} beside the network")
        return torch.compile(module)

    def teacher_forward(self, x: torch.Tensor):
        """The teacher's outputs and encoder features, in full-modality mode where it has a hyper-network."""
        full = x.new_ones(x.shape[:2])
        return forward_with_features(self.teacher, x, full if self.teacher_is_hyper else None)

    def log_epoch_terms(self, outputs: list[dict], names: tuple[str, ...]) -> None:
        means = {n: mean_over_ranks([float(o[n]) for o in outputs], self.is_ddp) for n in names}
        for name, value in means.items():
            self.log_extra(f"train_{name}" if name.startswith("grad") else f"train_{name}_loss", value)
        self.print_to_log_file("loss terms: " + ", ".join(f"{n} {v:.4f}" for n, v in means.items()))


class AllStageMAEDATrainer(FrozenTeacherMixin, AllStageMAETrainer):
    """Stage 3: the stage-1 MAE continued with L_rec + lambda * L_seg(f(phi(MASK(x))), y), f frozen in
    full-modality mode on the full reconstruction, at the highest resolution only. Gradients reach the MAE
    only; every reconstructed modality gets a training signal, also those absent from the data. L_rec runs over
    every training case, L_seg over those with labels."""

    stage_name = "stage 3 (MAE + distribution approximation)"
    stage1_trainer = "AllStageMAETrainer"
    teacher_deep_supervision = False
    own_options = ("lambda_seg",)

    @classmethod
    def predecessor_names(cls, config) -> list[str]:
        return [cls.stage1_trainer, cls.teacher_trainer]

    def initialize(self):
        super().initialize()
        self.teacher = self.build_teacher()

    def load_predecessors(self) -> None:
        weights, path = self.load_predecessor("pretrained MAE", self.stage1_trainer)
        unwrap(self.network).load_state_dict(weights, strict=True)
        self.print_to_log_file(f"MAE initialised from stage 1 {path}")

    def train_step(self, batch: dict) -> dict:
        target = batch["target"]
        target = (target[0] if isinstance(target, list) else target).to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            data, available, _, _, reconstruction = self.mae_forward(batch)
            rec = reconstruction_loss(reconstruction, data, available)
            # L_seg over the samples that have labels (all of them unless the dataset holds unlabelled cases);
            # self.loss is nnU-Net's region loss without deep supervision (off in the MAE trainers)
            labelled = self.batch_labelled(batch["keys"])
            seg = self.loss(self.teacher_forward(reconstruction[labelled])[0], target[labelled]) if bool(
                labelled.any()) else rec.new_zeros(())
            loss = rec + self.allstage_config.lambda_seg * seg
        self.check_finite(L_rec=rec, L_seg=seg)
        self.optimizer_step(loss, self.network)
        return {"loss": loss.detach().cpu().numpy(), "rec": rec.detach(), "seg": seg.detach()}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])  # nnU-Net collates numpy only
        self.log_epoch_terms(train_outputs, ("rec", "seg"))


class AllStageMAEDATrainer_Binary(AllStageMAEDATrainer):
    """Stage 3 with the binary-code stage-2 teacher."""
    teacher_trainer = "AllStageHyperTrainer_Binary"
    teacher_binary_code = True
