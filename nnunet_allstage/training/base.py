"""What every plugin trainer shares: per-case availability, re-zeroing after augmentation, modality dropout,
options, schedule overrides, predecessor checkpoints and extra checkpoint state."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from time import time

import numpy as np
import torch
from torch import autocast

from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.dataset_name_id_conversion import convert_dataset_name_to_id
from nnunetv2.utilities.helpers import dummy_context

from nnunet_allstage.checkpoints import safe_load
from nnunet_allstage.config import AllStageConfig, check_same_options, describe, load_config, schedule_suffix
from nnunet_allstage.environment import keep_freed_memory_in_process, model_folder
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.locks import TRAINER_LOCK, FoldLock
from nnunet_allstage.masking import modality_dropout, zero_missing
from nnunet_allstage.modalities import (AVAILABILITY_FILE, make_availability_record, modality_names_from_dataset_json,
                                        read_availability, write_availability)
from nnunet_allstage.networks import network_code, unwrap
from nnunet_allstage.planning import check_deep_supervision_depth, check_preprocessed_availability
from nnunet_allstage.private_api import epoch_log, nnunet_ddp_on_cpu, trainer_checkpoint_fields
from nnunet_allstage.training.optim import segmentation_optimizer

class NonFiniteLossError(AllStageError):
    """A loss term stopped being finite."""


def seed_everything(seed: int) -> None:
    """Reproducible runs: the same seed gives the same weights (on the same machine, thread count and device;
    nnU-Net's data augmentation must run in the main process, nnUNet_n_proc_DA=0, for its random draws to follow)."""
    import random
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class SegmentationOptimizerMixin:
    """Stage 2, stage 4 and the ablation trainers: nnU-Net's optimiser or the paper's (option
    ``segmentation_optimizer``), over the parameter groups the trainer names."""

    own_options = ("segmentation_optimizer",)

    def optimizer_param_groups(self) -> list[dict]:
        return [{"params": list(self.network.parameters())}]

    def configure_optimizers(self):
        optimizer, scheduler, _ = segmentation_optimizer(self.allstage_config.segmentation_optimizer,
                                                         self.optimizer_param_groups(), self.initial_lr,
                                                         self.weight_decay, self.num_epochs)
        return optimizer, scheduler


# the roles an earlier run plays for a later one, and the stage whose slot (and NNUNET_ALLSTAGE_STAGE<N>_CHECKPOINT)
# it takes: the pre-trained MAE of stage 1, the frozen teacher (stage 2's model, or the Table-5 (d) plain U-Net in its
# place), the MAE refined by distribution approximation (stage 3); stage 2's model is also the student's start with
# student_init=stage2
GRADIENT_CLIP_NORM = 12  # nnU-Net's
PREDECESSOR_ROLES = {"pretrained MAE": 1, "teacher": 2, "stage-2 model": 2, "approximated MAE": 3}


_TRAINERS: dict[str, type] = {}  # every plugin trainer class by name, as its module defines it


def registered_trainer(name: str) -> type:
    """A plugin trainer class by name (its module imported; a trainer's predecessors always are, as it imports
    them to start from them)."""
    if name not in _TRAINERS:
        raise AllStageError(f"no nnunet-allstage trainer named {name}")
    return _TRAINERS[name]


class AllStageTrainerBase(nnUNetTrainer):
    """nnU-Net's trainer plus availability handling. Subclasses override one thing each."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _TRAINERS[cls.__name__] = cls

    stage_name = "base"
    schedule_epochs: int | None = None  # set by the short-schedule variants
    # whether the trainer's batches may hold training cases without labels: only the self-supervised ones (stage 1,
    # and stage 3, whose segmentation term counts the labelled samples alone); the others never sample them
    samples_unlabelled = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp and device.type == "cpu":  # nnU-Net sets cuda under DDP; gloo on the CPU (tests) keeps cpu
            self.device, self.grad_scaler = device, None
        self.allstage_config: AllStageConfig = load_config(self.preprocessed_dataset_folder_base)
        self.modality_names = modality_names_from_dataset_json(dataset_json)
        if self.schedule_epochs:
            self.num_epochs = self.schedule_epochs
        cfg = self.allstage_config
        if cfg.num_epochs:
            self.num_epochs = cfg.num_epochs
        if cfg.iterations_per_epoch:
            self.num_iterations_per_epoch = cfg.iterations_per_epoch
        if cfg.val_iterations_per_epoch:
            self.num_val_iterations_per_epoch = cfg.val_iterations_per_epoch
        if cfg.save_every:
            self.save_every = cfg.save_every
        self.was_resumed = False
        self._availability = None
        self._availability_index: dict[str, int] = {}
        self.unlabelled_cases: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ availability
    def initialize(self):
        if self.allstage_config.num_threads > 0:
            torch.set_num_threads(self.allstage_config.num_threads)
        if self.allstage_config.seed >= 0:
            seed_everything(self.allstage_config.seed + self.local_rank)
        if self.enable_deep_supervision:
            check_deep_supervision_depth(self.configuration_manager.configuration, self.configuration_name,
                                         self.plans_manager.plans_name)
        with nnunet_ddp_on_cpu(self.device):
            super().initialize()
        if self.device.type == "cpu" and self.allstage_config.cpu_allocator == "keep" and \
                keep_freed_memory_in_process():
            self.print_to_log_file("CPU: freed memory stays in the process (no page faults for each step's "
                                   "activations)")
        self._load_availability()
        self.print_to_log_file(f"nnunet-allstage {self.stage_name}: options {describe(self.allstage_config)}")

    def _load_availability(self) -> None:
        if self.preprocessed_dataset_folder_base is None:
            return  # inference-only construction
        path = Path(self.preprocessed_dataset_folder_base) / AVAILABILITY_FILE
        raw = Path(nnUNet_raw) / self.plans_manager.dataset_name / AVAILABILITY_FILE if nnUNet_raw else None
        if path.is_file():
            record = read_availability(path)
        elif raw is not None and raw.is_file():  # planned with stock nnU-Net: take the converter's record
            record = read_availability(raw)
            if self.local_rank == 0:
                shutil.copyfile(raw, path)
        else:
            record = self._derive_availability(path)
        if record["modalities"] != self.modality_names:
            raise AllStageError(f"{path}: modalities {record['modalities']} differ from dataset.json's "
                                f"{self.modality_names}")
        keys = sorted(set(record["cases"]) | set(record.get("test_cases", {})))
        table = {**record.get("test_cases", {}), **record["cases"]}
        self._availability_record = record
        self.unlabelled_cases = frozenset(record.get("unlabelled", []))
        self._availability_index = {k: i for i, k in enumerate(keys)}
        self._availability = torch.tensor([table[k] for k in keys], dtype=torch.float32, device=self.device)

    def _derive_availability(self, path: Path) -> dict:
        """No modality_availability.json (a stock nnU-Net dataset): zero channels of the preprocessed arrays are
        missing modalities (nnU-Net keeps an all-zero channel exactly zero)."""
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        dataset = infer_dataset_class(self.preprocessed_dataset_folder)(self.preprocessed_dataset_folder)
        cases = {k: [int(np.any(np.asarray(c))) for c in dataset.load_case(k)[0]] for k in dataset.identifiers}
        record = make_availability_record(self.modality_names, cases, source="derived from preprocessed arrays")
        if self.local_rank == 0:
            write_availability(record, path.parent)
        self.print_to_log_file(f"{AVAILABILITY_FILE} was missing; derived it from the preprocessed data")
        return record

    def check_availability_against_data(self) -> None:
        t = time()
        check_preprocessed_availability(self._availability_record, Path(self.preprocessed_dataset_folder))
        self.print_to_log_file(f"availability of {len(self._availability_record['cases'])} cases checked against "
                               f"the preprocessed data ({time() - t:.1f} s)")

    def do_split(self):
        """nnU-Net's split, without the training cases that have no labels where this trainer must not sample
        them (they carry nothing but nnU-Net's ignore label)."""
        train, val = super().do_split()
        if self.samples_unlabelled or not self.unlabelled_cases:
            return train, val
        labelled = [k for k in train if k not in self.unlabelled_cases]
        if not labelled:
            raise AllStageError(f"every training case of fold {self.fold} is unlabelled ({AVAILABILITY_FILE}): "
                                f"{self.__class__.__name__} needs labelled cases; convert the dataset again with "
                                f"labelled cases (convert-brats --src with labels, or a larger --labelled-fraction) "
                                f"and run `nnunet-allstage plan`")
        return labelled, [k for k in val if k not in self.unlabelled_cases]

    def batch_labelled(self, keys) -> torch.Tensor:
        """(B,) True where the batch's case has labels."""
        return torch.tensor([str(k) not in self.unlabelled_cases for k in keys], device=self.device)

    def batch_availability(self, keys) -> torch.Tensor:
        try:
            rows = [self._availability_index[str(k)] for k in keys]
        except KeyError as e:
            raise AllStageError(f"case {e.args[0]} has no entry in {AVAILABILITY_FILE}; re-run "
                                f"`nnunet-allstage plan`") from None
        return self._availability[torch.tensor(rows, device=self._availability.device)]

    def prepare_batch(self, batch: dict, training: bool) -> torch.Tensor:
        """Re-zero missing channels (augmentation noise) and apply MDrop in training. Moves data to the device
        and returns the modality code the network must see."""
        data = batch["data"].to(self.device, non_blocking=True)
        code = self.batch_availability(batch["keys"])
        if training:
            code = self.drop_modalities(code)
        batch["data"] = zero_missing(data, code)
        return code

    def drop_modalities(self, available: torch.Tensor) -> torch.Tensor:
        """MDrop as the options say (documentation/method.md): the code a training sample is shown with."""
        cfg = self.allstage_config
        if cfg.modality_dropout != "uniform":
            return available
        return modality_dropout(available, full_set_probability=cfg.full_set_p)

    # ------------------------------------------------------------------ steps
    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self.iteration_in_epoch = 0

    def check_finite(self, **terms: torch.Tensor) -> None:
        """Stop at once when a loss term is NaN or infinite (nnU-Net trains on through it): one line naming the
        term, the epoch and the iteration. Called once per training step, before the step is applied where the
        trainer computes the loss itself; nothing of a failed step reaches a checkpoint."""
        self.iteration_in_epoch = getattr(self, "iteration_in_epoch", 0) + 1
        values = torch.stack([torch.as_tensor(v, dtype=torch.float32).detach().reshape(()).cpu()
                              for v in terms.values()])
        finite = torch.isfinite(values)  # one device sync for all terms
        if bool(finite.all()):
            return
        name, value = next((n, float(v)) for (n, v), ok in zip(zip(terms, values), finite) if not ok)
        latest = Path(self.output_folder) / "checkpoint_latest.pth"
        last = f"the last checkpoint on disk is {latest} (from before it)" if latest.is_file() else \
            "no checkpoint was written yet"
        raise NonFiniteLossError(
            f"{name} is {value} in epoch {self.current_epoch}, iteration {self.iteration_in_epoch} of "
            f"{self.num_iterations_per_epoch}: training stopped; {last}. Lower the learning rate or check the "
            f"data, then continue with --c")

    def train_step(self, batch: dict) -> dict:
        code = self.prepare_batch(batch, training=True)
        with network_code(self.network, code):
            out = super().train_step(batch)
        self.check_finite(L_seg=torch.from_numpy(np.asarray(out["loss"])))
        return out

    def validation_step(self, batch: dict) -> dict:
        code = self.prepare_batch(batch, training=False)
        with network_code(self.network, code):
            return super().validation_step(batch)

    def autocast(self):
        return autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context()

    def optimizer_step(self, loss: torch.Tensor, *modules: torch.nn.Module) -> list[float]:
        """nnU-Net's backward / clip / step, with its grad scaler. Each module's gradient is clipped on its own
        (nnU-Net's norm): clipped together, a large gradient of one module (stage 4's recovering module) would
        shrink the step of the other (the student). Returns each module's gradient norm before clipping."""
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norms = [float(torch.nn.utils.clip_grad_norm_(m.parameters(), GRADIENT_CLIP_NORM)) for m in modules]
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()
        return norms

    def log_extra(self, key: str, value) -> None:
        """Log a value nnU-Net's logger does not know, one per epoch, padded if the key is new."""
        store = epoch_log(self.logger)
        values = store.setdefault(key, [])
        while len(values) < self.current_epoch:
            values.append(None)
        self.logger.log(key, value, self.current_epoch)

    # ------------------------------------------------------------------ start, predecessors, checkpoints
    def on_train_start(self):
        self.fold_lock = FoldLock(self.output_folder, TRAINER_LOCK, "training")
        if self.local_rank == 0:  # one lock per run, also under DDP
            self.fold_lock.acquire(self.print_to_log_file)
        if not self.was_initialized:
            self.initialize()
        self.check_availability_against_data()
        if not self.was_resumed:
            self.load_predecessors()
        super().on_train_start()

    def perform_actual_validation(self, save_probabilities: bool = False):
        if not self.allstage_config.final_validation:
            self.print_to_log_file("final validation skipped (option final_validation is 0)")
            return
        super().perform_actual_validation(save_probabilities)

    def run_training(self):
        try:
            super().run_training()
        finally:  # also when training stops on an error: the lock is this run's only while it runs
            lock = getattr(self, "fold_lock", None)
            if lock is not None:
                lock.release()

    # options of allstage_config.json that change what a trainer class learns, declared by each class for what it
    # adds; options_that_matter() collects them along the class hierarchy (predecessors' options come on top)
    own_options = ("modality_dropout", "full_set_probability")

    @classmethod
    def options_that_matter(cls) -> tuple[str, ...]:
        names = {n for klass in cls.__mro__ for n in vars(klass).get("own_options", ())}
        if getattr(cls, "binary_code", False):
            names -= {"clip_model", "clip_pretrained", "clip_weights"}
        return tuple(sorted(names))

    @classmethod
    def predecessor_names(cls, config: AllStageConfig) -> list[str]:
        """The trainers (without schedule suffix) whose checkpoints this one starts from."""
        return []

    def load_predecessors(self) -> None:
        """Initialise from earlier stages (none for stage 1 and the baselines)."""

    def load_predecessor(self, role: str, trainer_base_name: str) -> tuple[dict, Path]:
        """The weights and checkpoint path of the predecessor in ``role`` (a key of PREDECESSOR_ROLES), loaded safely,
        after checking that it was trained with the options that matter to it as this run has them."""
        stage = PREDECESSOR_ROLES[role]
        path = self.predecessor_checkpoint(stage, trainer_base_name)
        checkpoint = safe_load(path)
        recorded = checkpoint.get("allstage", {}).get("options")
        if recorded is None and getattr(self.allstage_config, f"stage{stage}_checkpoint"):
            # a checkpoint the user named, written by another tool: their choice, said in the log
            self.print_to_log_file(f"note: {path} records no nnunet-allstage options; not checked")
        else:
            recorded = recorded or {}
            names = registered_trainer(trainer_base_name).options_that_matter()
            check_same_options(recorded, self.allstage_config, names, f"stage {stage} ({path})",
                               f"retrain {trainer_base_name} with this run's options, or run this stage with the "
                               f"options it had")
        return checkpoint["network_weights"], path

    def predecessor_checkpoint(self, stage: int, trainer_base_name: str) -> Path:
        explicit = getattr(self.allstage_config, f"stage{stage}_checkpoint")
        trainer_name = trainer_base_name + schedule_suffix(self.schedule_epochs)
        if explicit:
            path = Path(explicit)
            if not path.is_file():
                raise AllStageError(f"stage {stage} checkpoint {path} (NNUNET_ALLSTAGE_STAGE{stage}_CHECKPOINT) "
                                    f"does not exist")
            return path
        dataset = self.plans_manager.dataset_name
        path = (model_folder(dataset, trainer_name, self.plans_manager.plans_name, self.configuration_name)
                / f"fold_{self.fold}" / "checkpoint_final.pth")
        if not path.is_file():
            plans = "" if self.plans_manager.plans_name == "nnUNetPlans" else f" -p {self.plans_manager.plans_name}"
            raise AllStageError(
                f"stage {stage} checkpoint not found: {path}. Train it first: nnUNetv2_train {convert_dataset_name_to_id(dataset)} "
                f"{self.configuration_name} {self.fold} -tr {trainer_name}{plans} (or set "
                f"NNUNET_ALLSTAGE_STAGE{stage}_CHECKPOINT to a checkpoint file)")
        return path

    def extra_checkpoint_state(self) -> dict:
        return {}

    def load_extra_checkpoint_state(self, checkpoint: dict) -> None:
        pass

    def save_checkpoint(self, filename: str) -> None:
        # nnU-Net's, plus extra keys that the predictor ignores
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": unwrap(self.network).state_dict(),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "logging": self.logger.get_checkpoint(),
            "current_epoch": self.current_epoch + 1,
            **trainer_checkpoint_fields(self),
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            "allstage": {"stage": self.stage_name, "options": json.loads(describe(self.allstage_config)),
                         **self.extra_checkpoint_state()},
        }
        tmp = f"{filename}.tmp"
        torch.save(checkpoint, tmp)
        Path(tmp).replace(filename)  # an interrupted save never leaves a truncated checkpoint

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not isinstance(filename_or_checkpoint, str):
            raise TypeError("pass a checkpoint path (nnU-Net 2.8.1 cannot load from a dict)")
        extra = safe_load(filename_or_checkpoint).get("allstage", {})
        check_same_options(extra.get("options", {}), self.allstage_config, self.options_that_matter(),
                           f"the run to resume ({filename_or_checkpoint})",
                           "set the options as they were to continue it, or start afresh without --c")
        super().load_checkpoint(filename_or_checkpoint)
        self.was_resumed = True
        self.load_extra_checkpoint_state(extra)
