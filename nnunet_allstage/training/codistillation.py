"""Stage 4: data-model co-distillation (Eq. 4, 5, 7), the full method, and its ablations (paper Tables 4 and 5)."""
from __future__ import annotations

import torch

from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.losses import multi_level_mad
from nnunet_allstage.masking import fill_missing, mask_input, zero_missing
from nnunet_allstage.networks import build_mae_network, forward_with_features, transfer_weights
from nnunet_allstage.private_api import ddp
from nnunet_allstage.training.base import AllStageTrainerBase, SegmentationOptimizerMixin, unwrap
from nnunet_allstage.training.distribution_approximation import FrozenTeacherMixin
from nnunet_allstage.training.segmentation import HyperNetworkMixin


class AllStageTrainer(HyperNetworkMixin, SegmentationOptimizerMixin, FrozenTeacherMixin, AllStageTrainerBase):
    """Stage 4, the full method. Per batch: g recovers the missing modalities, x_f = a*x + (1-a)*g(x); the
    frozen hyper-teacher (code all ones) runs once on x_f for both L_data (refines g) and the KD features;
    the student (the deployed network) sees MDrop(x) with its code. Loss L_task + alpha L_data + beta L_KD;
    student and g are separate parameter groups (g's learning rate scaled by ``recovery_lr_scale``), each with
    its own gradient clipping. ``network_weights`` holds the student alone."""

    stage_name = "stage 4 (data-model co-distillation)"
    stage2_trainer = "AllStageHyperTrainer"  # the student's start with student_init=stage2
    stage3_trainer = "AllStageMAEDATrainer"
    use_kd = True
    use_recovery = True  # False: the teacher sees only the available modalities (Table 5 (b))
    train_recovery = True  # False: g stays as stage 3 left it (Table 5 (c))

    own_options = ("recovery_lr_scale", "recovery_input", "student_init", "alpha_data", "beta_kd", "kd_pool_size",
                   "kd_num_levels")

    @classmethod
    def predecessor_names(cls, config) -> list[str]:
        names = [cls.teacher_trainer]
        if cls.use_recovery or config.student_init == "stage3":
            names.append(cls.stage3_trainer)
        if config.student_init == "stage2":
            names.append(cls.stage2_trainer)
        return names

    def initialize(self):
        num_inputs = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        # built before super().initialize(), whose configure_optimizers() needs the recovering module
        self.recovery = None
        if self.use_recovery:
            self.recovery = build_mae_network(self.plans_manager, self.configuration_manager, num_inputs).to(self.device)
            if not self.train_recovery:
                self.recovery.requires_grad_(False)
            self.recovery = self.compiled_like_the_network(self.recovery)
        self.teacher = self.build_teacher()
        super().initialize()
        if self.teacher_is_hyper and not torch.equal(unwrap(self.network).code_table.cpu(),
                                                     unwrap(self.teacher).code_table.cpu()):
            raise AllStageError(f"the stage-2 teacher's modality-code embeddings differ from this run's "
                                f"({self.code_table_description}): train stage 2 with the same CLIP options, or set "
                                f"them as stage 2 had them")
        if self.is_ddp and self.trains_recovery:
            self.recovery = ddp(self.recovery, self.device, self.local_rank)

    @property
    def trains_recovery(self) -> bool:
        return self.use_recovery and self.train_recovery

    def optimizer_param_groups(self) -> list[dict]:
        groups = super().optimizer_param_groups()
        if self.trains_recovery:
            groups.append({"params": list(self.recovery.parameters()),
                           "lr_scale": self.allstage_config.recovery_lr_scale})
        return groups

    def load_predecessors(self) -> None:
        cfg = self.allstage_config
        stage3_weights, stage3 = self.load_predecessor("approximated MAE", self.stage3_trainer) if self.stage3_trainer in \
            self.predecessor_names(cfg) else (None, None)
        if self.use_recovery:
            unwrap(self.recovery).load_state_dict(stage3_weights, strict=True)
            self.print_to_log_file(f"recovering module initialised from stage 3 {stage3}")
        if cfg.student_init == "stage2":
            weights, path = self.load_predecessor("stage-2 model", self.stage2_trainer)
            unwrap(self.network).load_state_dict(weights, strict=True)
            self.print_to_log_file(f"student initialised from the stage-2 model {path}")
        else:
            loaded, skipped = transfer_weights(stage3_weights, unwrap(self.network))
            self.print_to_log_file(f"student initialised from stage 3 {stage3} ({loaded} tensors loaded, "
                                   f"{len(skipped)} fresh: hyper head, deep-supervision heads)")

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if self.use_recovery:
            self.recovery.train(self.train_recovery)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        if self.use_recovery:
            self.recovery.eval()

    def recovered_input(self, x: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """What the teacher sees: x with g's fill-ins where the case lacks a modality (Eq. 4)."""
        if not self.use_recovery:
            return x
        cfg = self.allstage_config
        g_input = x if cfg.recovery_input == "available" else \
            mask_input(x, available, cfg.mask_patch_size, cfg.mask_ratio)
        with torch.set_grad_enabled(self.trains_recovery):
            recovered = self.recovery(g_input)
        return fill_missing(x, available, recovered)

    def train_step(self, batch: dict) -> dict:
        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"]
        target = [t.to(self.device, non_blocking=True) for t in target] if isinstance(target, list) else \
            target.to(self.device, non_blocking=True)
        available = self.batch_availability(batch["keys"])
        x = zero_missing(data, available)  # no augmentation noise in missing channels
        code = self.drop_modalities(available)
        cfg = self.allstage_config
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            teacher_out, teacher_skips = self.teacher_forward(self.recovered_input(x, available))
            l_data = self.loss(teacher_out, target) if self.trains_recovery else x.new_zeros(())
            student_out, student_skips = forward_with_features(self.network, zero_missing(x, code), code)
            l_task = self.loss(student_out, target)
            if self.use_kd:
                levels = slice(len(student_skips) - cfg.kd_num_levels, None)
                top = teacher_out[0] if isinstance(teacher_out, (list, tuple)) else teacher_out
                l_kd = multi_level_mad(student_skips[levels], teacher_skips[levels], top, cfg.kd_pool_size,
                                       self.label_manager.has_regions)
            else:
                l_kd = x.new_zeros(())
            loss = l_task + cfg.alpha_data * l_data + cfg.beta_kd * l_kd
        self.check_finite(L_task=l_task, L_data=l_data, L_KD=l_kd)
        norms = self.optimizer_step(loss, self.network, *([self.recovery] if self.trains_recovery else []))
        out = {"loss": loss.detach().cpu().numpy(), "task": l_task.detach(), "data": l_data.detach(),
               "kd": l_kd.detach(), "grad_norm_student": norms[0]}
        if self.trains_recovery:
            out["grad_norm_recovery"] = norms[1]
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])  # nnU-Net collates numpy only
        names = ("task", "data", "kd", "grad_norm_student") + (("grad_norm_recovery",) if self.trains_recovery else ())
        self.log_epoch_terms(train_outputs, names)

    def extra_checkpoint_state(self) -> dict:
        state = super().extra_checkpoint_state()
        if self.use_recovery:
            state["recovery_weights"] = unwrap(self.recovery).state_dict()
        return state

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        super().load_extra_checkpoint_state(checkpoint)
        if not self.use_recovery:
            return
        if "recovery_weights" not in checkpoint:
            raise AllStageError("this checkpoint has no recovering module (not written by AllStageTrainer)")
        unwrap(self.recovery).load_state_dict(checkpoint["recovery_weights"])


# ---------------------------------------------------------------------------------------- ablations (paper Sec. 4.4)
class AllStageTrainer_NoKD(AllStageTrainer):
    """Ablation: without the MAD distillation term."""
    use_kd = False


class AllStageTrainer_NoDataRefinement(AllStageTrainer):
    """Ablation: the recovering module stays as stage 3 left it (frozen, no L_data)."""
    train_recovery = False


class AllStageTrainer_NoHyperTeacher(AllStageTrainer):
    """Ablation: co-distillation (g refined by L_data) whose teacher has no hyper-network: the Table-4 "MAE
    baseline" model (AllStageMAEFinetuneTrainer), fed g's fill-ins."""
    teacher_trainer = "AllStageMAEFinetuneTrainer"
    teacher_is_hyper = False


class AllStageTrainer_Binary(AllStageTrainer):
    """Table 5 (e): the full co-distillation with binary codes instead of CLIP, for teacher, stage 3 and student
    (needs no CLIP)."""
    teacher_trainer = stage2_trainer = "AllStageHyperTrainer_Binary"
    stage3_trainer = "AllStageMAEDATrainer_Binary"
    binary_code = teacher_binary_code = True


class AllStageTrainer_ModelDistNoMAE_Binary(AllStageTrainer_Binary):
    """Table 5 (b): KD from the frozen binary-code hyper-teacher in full mode fed only the available modalities; no
    recovering module."""
    use_recovery = False


class AllStageTrainer_NoDataRefinement_Binary(AllStageTrainer_Binary):
    """Table 5 (c): as (b), but the teacher is fed the fill-ins of a frozen g (stage 3's)."""
    train_recovery = False


class AllStageTrainer_NoHyperTeacher_Binary(AllStageTrainer_Binary):
    """Table 5 (d): co-distillation (g refined by L_data) whose teacher is a segmentation network without a
    hyper-network (the Table-4 "MAE baseline" model, AllStageMAEFinetuneTrainer), fed g's fill-ins."""
    teacher_trainer = "AllStageMAEFinetuneTrainer"
    teacher_is_hyper = False
