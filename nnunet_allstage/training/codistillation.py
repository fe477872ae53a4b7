"""Stage 3 (distribution approximation, Eq. 3) and stage 4 (data-model co-distillation, Eq. 4/5/7)."""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.losses import multi_level_mad, reconstruction_loss
from nnunet_allstage.masking import fill_missing, mask_input, zero_missing
from nnunet_allstage.networks import forward_with_features, freeze_unused_heads, transfer_weights
from nnunet_allstage.private_api import ddp, nnunet_compiles
from nnunet_allstage.training.base import AllStageTrainerBase, SegmentationOptimizerMixin, unwrap
from nnunet_allstage.training.mae import AllStageMAETrainer
from nnunet_allstage.training.segmentation import (AllStageHyperTrainer, AllStageHyperTrainer_Binary, HyperNetworkMixin,
                                                   build_hyper_network)


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
    binary_code = False
    teacher_deep_supervision = True

    def build_teacher(self) -> torch.nn.Module:
        num_inputs = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        num_outputs = self.label_manager.num_segmentation_heads
        if self.teacher_is_hyper:
            teacher = build_hyper_network(self.plans_manager, self.configuration_manager, num_inputs, num_outputs,
                                          self.teacher_deep_supervision, self.binary_code)
        else:
            teacher = nnUNetTrainer.build_network_architecture(self.plans_manager, self.configuration_manager,
                                                               num_inputs, num_outputs, self.teacher_deep_supervision)
        weights, path = self.load_predecessor(2, self.teacher_trainer)
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
            self.log_extra(f"train_{name}" if name.startswith("grad") or name.startswith("joint") else
                           f"train_{name}_loss", value)
        self.print_to_log_file("loss terms: " + ", ".join(f"{n} {v:.4f}" for n, v in means.items()))


class AllStageMAEDATrainer(FrozenTeacherMixin, AllStageMAETrainer):
    """Stage 3: the stage-1 MAE continued with L_rec + lambda * L_seg(f(phi(MASK(x))), y), f frozen in
    full-modality mode on the full reconstruction, at the highest resolution only. Gradients reach the MAE
    only; every reconstructed modality gets a training signal, also those absent from the data."""

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
        weights, path = self.load_predecessor(1, self.stage1_trainer)
        unwrap(self.network).load_state_dict(weights, strict=True)
        self.print_to_log_file(f"MAE initialised from stage 1 {path}")

    def train_step(self, batch: dict) -> dict:
        target = batch["target"]
        target = (target[0] if isinstance(target, list) else target).to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            data, available, _, _, reconstruction = self.mae_forward(batch)
            rec = reconstruction_loss(reconstruction, data, available)
            # self.loss is nnU-Net's region loss without deep supervision (off in the MAE trainers)
            seg = self.loss(self.teacher_forward(reconstruction)[0], target)
            loss = rec + self.allstage_config.lambda_seg * seg
        self.optimizer_step(loss, self.network)
        return {"loss": loss.detach().cpu().numpy(), "rec": rec.detach(), "seg": seg.detach()}

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])  # nnU-Net collates numpy only
        self.log_epoch_terms(train_outputs, ("rec", "seg"))


class AllStageMAEDATrainer_Binary(AllStageMAEDATrainer):
    """Stage 3 with the binary-code stage-2 teacher."""
    teacher_trainer = "AllStageHyperTrainer_Binary"
    binary_code = True


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

    build_network_architecture = staticmethod(AllStageHyperTrainer.build_network_architecture)
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
            self.recovery = AllStageMAETrainer.build_network_architecture(
                self.plans_manager, self.configuration_manager, num_inputs, num_inputs).to(self.device)
            self.recovery.requires_grad_(self.train_recovery)
            self.recovery = self.compiled_like_the_network(freeze_unused_heads(self.recovery))
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
        stage3_weights, stage3 = self.load_predecessor(3, self.stage3_trainer) if self.stage3_trainer in \
            self.predecessor_names(cfg) else (None, None)
        if self.use_recovery:
            unwrap(self.recovery).load_state_dict(stage3_weights, strict=True)
            self.print_to_log_file(f"recovering module initialised from stage 3 {stage3}")
        if cfg.student_init == "stage2":
            weights, path = self.load_predecessor(2, self.stage2_trainer)
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
        norms = self.optimizer_step(loss, self.network, *([self.recovery] if self.trains_recovery else []))
        out = {"loss": loss.detach().cpu().numpy(), "task": l_task.detach(), "data": l_data.detach(),
               "kd": l_kd.detach(), "grad_norm_student": norms[0]}
        if self.trains_recovery:
            # what clipping student and g together (before this was fixed) would have left of the student's step
            joint = (norms[0] ** 2 + norms[1] ** 2) ** 0.5
            out.update(grad_norm_recovery=norms[1],
                       joint_clip_student_step=min(1.0, 12 / max(joint, 1e-12)) / min(1.0, 12 / max(norms[0], 1e-12)))
        return out

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end([{"loss": o["loss"]} for o in train_outputs])  # nnU-Net collates numpy only
        names = ("task", "data", "kd", "grad_norm_student") + \
            (("grad_norm_recovery", "joint_clip_student_step") if self.trains_recovery else ())
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
    binary_code = True

    build_network_architecture = staticmethod(AllStageHyperTrainer_Binary.build_network_architecture)


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


# Short schedules, named as nnU-Net names its own; a stage starts from its predecessor's variant of the same schedule.
class AllStageMAEDATrainer_1epoch(AllStageMAEDATrainer):
    schedule_epochs = 1


class AllStageMAEDATrainer_5epochs(AllStageMAEDATrainer):
    schedule_epochs = 5


class AllStageMAEDATrainer_50epochs(AllStageMAEDATrainer):
    schedule_epochs = 50


class AllStageMAEDATrainer_Binary_1epoch(AllStageMAEDATrainer_Binary):
    schedule_epochs = 1


class AllStageMAEDATrainer_Binary_5epochs(AllStageMAEDATrainer_Binary):
    schedule_epochs = 5


class AllStageMAEDATrainer_Binary_50epochs(AllStageMAEDATrainer_Binary):
    schedule_epochs = 50


class AllStageTrainer_1epoch(AllStageTrainer):
    schedule_epochs = 1


class AllStageTrainer_5epochs(AllStageTrainer):
    schedule_epochs = 5


class AllStageTrainer_50epochs(AllStageTrainer):
    schedule_epochs = 50


class AllStageTrainer_Binary_1epoch(AllStageTrainer_Binary):
    schedule_epochs = 1


class AllStageTrainer_Binary_5epochs(AllStageTrainer_Binary):
    schedule_epochs = 5


class AllStageTrainer_Binary_50epochs(AllStageTrainer_Binary):
    schedule_epochs = 50


class AllStageTrainer_NoKD_1epoch(AllStageTrainer_NoKD):
    schedule_epochs = 1


class AllStageTrainer_NoKD_5epochs(AllStageTrainer_NoKD):
    schedule_epochs = 5


class AllStageTrainer_NoKD_50epochs(AllStageTrainer_NoKD):
    schedule_epochs = 50


class AllStageTrainer_NoDataRefinement_1epoch(AllStageTrainer_NoDataRefinement):
    schedule_epochs = 1


class AllStageTrainer_NoDataRefinement_5epochs(AllStageTrainer_NoDataRefinement):
    schedule_epochs = 5


class AllStageTrainer_NoDataRefinement_50epochs(AllStageTrainer_NoDataRefinement):
    schedule_epochs = 50


class AllStageTrainer_NoHyperTeacher_1epoch(AllStageTrainer_NoHyperTeacher):
    schedule_epochs = 1


class AllStageTrainer_NoHyperTeacher_5epochs(AllStageTrainer_NoHyperTeacher):
    schedule_epochs = 5


class AllStageTrainer_NoHyperTeacher_50epochs(AllStageTrainer_NoHyperTeacher):
    schedule_epochs = 50


class AllStageTrainer_ModelDistNoMAE_Binary_1epoch(AllStageTrainer_ModelDistNoMAE_Binary):
    schedule_epochs = 1


class AllStageTrainer_ModelDistNoMAE_Binary_5epochs(AllStageTrainer_ModelDistNoMAE_Binary):
    schedule_epochs = 5


class AllStageTrainer_ModelDistNoMAE_Binary_50epochs(AllStageTrainer_ModelDistNoMAE_Binary):
    schedule_epochs = 50


class AllStageTrainer_NoDataRefinement_Binary_1epoch(AllStageTrainer_NoDataRefinement_Binary):
    schedule_epochs = 1


class AllStageTrainer_NoDataRefinement_Binary_5epochs(AllStageTrainer_NoDataRefinement_Binary):
    schedule_epochs = 5


class AllStageTrainer_NoDataRefinement_Binary_50epochs(AllStageTrainer_NoDataRefinement_Binary):
    schedule_epochs = 50


class AllStageTrainer_NoHyperTeacher_Binary_1epoch(AllStageTrainer_NoHyperTeacher_Binary):
    schedule_epochs = 1


class AllStageTrainer_NoHyperTeacher_Binary_5epochs(AllStageTrainer_NoHyperTeacher_Binary):
    schedule_epochs = 5


class AllStageTrainer_NoHyperTeacher_Binary_50epochs(AllStageTrainer_NoHyperTeacher_Binary):
    schedule_epochs = 50
