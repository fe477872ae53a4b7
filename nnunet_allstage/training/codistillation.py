"""Stage 3 (distribution approximation, Eq. 3) and stage 4 (data-model co-distillation, Eq. 4/5/7)."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from nnunet_allstage.losses import multi_level_mad, reconstruction_loss
from nnunet_allstage.masking import fill_missing, modality_dropout, zero_missing
from nnunet_allstage.networks import HyperSegNetwork, transfer_weights
from nnunet_allstage.training.base import AllStageTrainerBase, load_network_weights, unwrap
from nnunet_allstage.training.mae import AllStageMAETrainer
from nnunet_allstage.training.segmentation import (AllStageHyperTrainer, AllStageHyperTrainer_Binary,
                                                   build_hyper_network)


def mean_over_ranks(values: list[float], is_ddp: bool) -> float:
    local = float(np.mean(values)) if values else float("nan")
    if not is_ddp:
        return local
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return float(np.nanmean(gathered))


class FrozenTeacherMixin:
    """The stage-2 model f as a frozen teacher, reloaded from its checkpoint whenever the trainer starts."""

    stage2_trainer = "AllStageHyperTrainer"
    binary_code = False
    teacher_deep_supervision = True

    def build_teacher(self) -> HyperSegNetwork:
        num_inputs = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        teacher = build_hyper_network(self.plans_manager, self.configuration_manager, num_inputs,
                                      self.label_manager.num_segmentation_heads, self.teacher_deep_supervision,
                                      self.binary_code)
        path = self.predecessor_checkpoint(2, self.stage2_trainer)
        teacher.load_state_dict(load_network_weights(path)["network_weights"], strict=True)
        teacher.requires_grad_(False)
        self.print_to_log_file(f"frozen hyper-teacher loaded from stage 2 {path}")
        return teacher.to(self.device).eval()

    def log_epoch_terms(self, outputs: list[dict], names: tuple[str, ...]) -> None:
        means = {n: mean_over_ranks([float(o[n]) for o in outputs], self.is_ddp) for n in names}
        for name, value in means.items():
            self.log_extra(f"train_{name}_loss", value)
        self.print_to_log_file("loss terms: " + ", ".join(f"{n} {v:.4f}" for n, v in means.items()))


class AllStageMAEDATrainer(FrozenTeacherMixin, AllStageMAETrainer):
    """Stage 3: the stage-1 MAE continued with L_rec + lambda * L_seg(f(phi(MASK(x))), y), f frozen in
    full-modality mode on the full reconstruction, at the highest resolution only. Gradients reach the MAE
    only; every reconstructed modality gets a training signal, also those absent from the data."""

    stage_name = "stage 3 (MAE + distribution approximation)"
    stage1_trainer = "AllStageMAETrainer"
    teacher_deep_supervision = False

    def initialize(self):
        super().initialize()
        self.teacher = self.build_teacher()

    def load_predecessors(self) -> None:
        path = self.predecessor_checkpoint(1, self.stage1_trainer)
        unwrap(self.network).load_state_dict(load_network_weights(path)["network_weights"], strict=True)
        self.print_to_log_file(f"MAE initialised from stage 1 {path}")

    def train_step(self, batch: dict) -> dict:
        target = batch["target"]
        target = (target[0] if isinstance(target, list) else target).to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            data, available, _, _, reconstruction = self.mae_forward(batch)
            rec = reconstruction_loss(reconstruction, data, available)
            full = torch.ones_like(available)
            # self.loss is nnU-Net's region loss without deep supervision (off in the MAE trainers)
            seg = self.loss(self.teacher(reconstruction, full), target)
            loss = rec + self.allstage_config.lambda_seg * seg
        self.optimizer_step(loss, self.network.parameters())
        return {"loss": loss.detach().cpu().numpy(), "rec": rec.detach(), "seg": seg.detach()}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])  # nnU-Net collates numpy only
        self.log_epoch_terms(train_outputs, ("rec", "seg"))


class AllStageMAEDATrainer_Binary(AllStageMAEDATrainer):
    """Stage 3 with the binary-code stage-2 teacher."""
    stage2_trainer = "AllStageHyperTrainer_Binary"
    binary_code = True


class AllStageTrainer(FrozenTeacherMixin, AllStageTrainerBase):
    """Stage 4, the full method. Per batch: g recovers the missing modalities, x_f = a*x + (1-a)*g(x); the
    frozen hyper-teacher (code all ones) runs once on x_f for both L_data (refines g) and the KD features;
    the student (the deployed network) sees MDrop(x) with its code. Loss L_task + alpha L_data + beta L_KD,
    one optimiser over student and g. ``network_weights`` holds the student alone."""

    stage_name = "stage 4 (data-model co-distillation)"
    allow_compile = False
    stage3_trainer = "AllStageMAEDATrainer"
    use_kd = True
    train_recovery = True
    teacher_sees_full_code = True

    build_network_architecture = staticmethod(AllStageHyperTrainer.build_network_architecture)

    def initialize(self):
        num_inputs = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        # built before super().initialize(), whose configure_optimizers() needs the recovering module
        self.recovery = AllStageMAETrainer.build_network_architecture(
            self.plans_manager, self.configuration_manager, num_inputs, num_inputs).to(self.device)
        self.recovery.requires_grad_(self.train_recovery)
        self.teacher = self.build_teacher()
        super().initialize()
        unwrap(self.network).code_table.copy_(self.teacher.code_table)  # the same embeddings as the teacher
        if self.is_ddp and self.train_recovery:
            self.recovery = DDP(self.recovery, device_ids=[self.local_rank])

    def configure_optimizers(self):
        params = list(self.network.parameters())
        if self.train_recovery:
            params += list(self.recovery.parameters())
        optimizer = torch.optim.SGD(params, self.initial_lr, weight_decay=self.weight_decay, momentum=0.99,
                                    nesterov=True)
        from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def load_predecessors(self) -> None:
        path = self.predecessor_checkpoint(3, self.stage3_trainer)
        weights = load_network_weights(path)["network_weights"]
        unwrap(self.recovery).load_state_dict(weights, strict=True)
        loaded, skipped = transfer_weights(weights, unwrap(self.network))
        self.print_to_log_file(f"recovering module and student initialised from stage 3 {path} (student: {loaded} "
                               f"tensors loaded, {len(skipped)} fresh: hyper head, deep-supervision heads)")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.recovery.train(self.train_recovery)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self.recovery.eval()

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            target.to(self.device, non_blocking=True)
        available = self.batch_availability(batch["keys"])
        x = zero_missing(data, available)  # no augmentation noise in missing channels
        code = modality_dropout(available) if self.allstage_config.modality_dropout == "uniform" else available
        cfg = self.allstage_config
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            with torch.set_grad_enabled(self.train_recovery):
                recovered = self.recovery(x)
            x_filled = fill_missing(x, available, recovered)
            teacher_code = torch.ones_like(available) if self.teacher_sees_full_code else code
            teacher_out, teacher_skips = self.teacher(x_filled, teacher_code, return_features=True)
            l_data = self.loss(teacher_out, target) if self.train_recovery else x.new_zeros(())
            student_out, student_skips = self.network(zero_missing(x, code), code, return_features=True)
            l_task = self.loss(student_out, target)
            if self.use_kd:
                levels = slice(len(student_skips) - cfg.kd_num_levels, None)
                top = teacher_out[0] if isinstance(teacher_out, (list, tuple)) else teacher_out
                l_kd = multi_level_mad(student_skips[levels], teacher_skips[levels], top, cfg.kd_pool_size,
                                       self.label_manager.has_regions)
            else:
                l_kd = x.new_zeros(())
            loss = l_task + cfg.alpha_data * l_data + cfg.beta_kd * l_kd
        params = list(self.network.parameters()) + (list(self.recovery.parameters()) if self.train_recovery else [])
        self.optimizer_step(loss, params)
        return {"loss": loss.detach().cpu().numpy(), "task": l_task.detach(), "data": l_data.detach(),
                "kd": l_kd.detach()}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])  # nnU-Net collates numpy only
        self.log_epoch_terms(train_outputs, ("task", "data", "kd"))

    def extra_checkpoint_state(self) -> dict:
        return {**super().extra_checkpoint_state(), "recovery_weights": unwrap(self.recovery).state_dict()}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        if "recovery_weights" not in checkpoint:
            raise RuntimeError("this checkpoint has no recovering module (not written by AllStageTrainer)")
        unwrap(self.recovery).load_state_dict(checkpoint["recovery_weights"])


class AllStageTrainer_NoKD(AllStageTrainer):
    """Ablation: without the MAD distillation term."""
    use_kd = False


class AllStageTrainer_NoDataRefinement(AllStageTrainer):
    """Ablation: the recovering module stays as stage 3 left it (frozen, no L_data)."""
    train_recovery = False


class AllStageTrainer_NoHyperTeacher(AllStageTrainer):
    """Ablation: the teacher is fed the student's modality code instead of 'all present'."""
    teacher_sees_full_code = False


class AllStageTrainer_Binary(AllStageTrainer):
    """Ablation: the binary-code MLP instead of CLIP, for teacher, stage 3 and student (needs no CLIP)."""
    stage2_trainer = "AllStageHyperTrainer_Binary"
    stage3_trainer = "AllStageMAEDATrainer_Binary"
    binary_code = True

    build_network_architecture = staticmethod(AllStageHyperTrainer_Binary.build_network_architecture)
