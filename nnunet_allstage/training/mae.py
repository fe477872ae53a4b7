"""Stage 1: multimodal MAE pre-training (Eq. 1)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from nnunet_allstage.losses import reconstruction_loss
from nnunet_allstage.masking import mask_input, zero_missing
from nnunet_allstage.metrics import psnr
from nnunet_allstage.networks import build_mae_network
from nnunet_allstage.training.base import AllStageTrainerBase
from nnunet_allstage.training.optim import adam_cosine


def reconstruction_psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, M) PSNR in dB with each target channel's own peak magnitude as the signal range."""
    mse = (reconstruction.float() - target.float()).pow(2).flatten(2).mean(2)
    return psnr(mse, target.float().abs().flatten(2).amax(2))


class MAETrainerMixin:
    """The MAE's masking, loss, steps and logging; shared by stage 1 and stage 3."""

    def mae_forward(self, batch: dict):
        data = batch["data"].to(self.device, non_blocking=True)
        available = self.batch_availability(batch["keys"])
        data = zero_missing(data, available)
        cfg = self.allstage_config
        kept = self.drop_modalities(available)
        masked = mask_input(data, kept, cfg.mask_patch_size, cfg.mask_ratio)
        reconstruction = self.network(masked)
        return data, available, masked, kept, reconstruction

    def validation_step(self, batch: dict) -> dict:
        with self.autocast():
            data, available, _, _, reconstruction = self.mae_forward(batch)
            loss, mse = reconstruction_loss(reconstruction, data, available, per_modality=True)
        db = reconstruction_psnr(reconstruction, data).masked_fill(available == 0, float("nan"))
        return {"loss": loss.detach().cpu().numpy(), "mse": mse.cpu().numpy(), "psnr": db.cpu().numpy()}

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        losses = np.array([o["loss"] for o in val_outputs])
        mse = np.concatenate([o["mse"] for o in val_outputs])
        db = np.concatenate([o["psnr"] for o in val_outputs])
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (losses, mse, db))
            losses = np.concatenate([g[0] for g in gathered])
            mse = np.concatenate([g[1] for g in gathered])
            db = np.concatenate([g[2] for g in gathered])
        with np.errstate(all="ignore"):
            mse_per_modality = np.nanmean(mse, 0)
            psnr_per_modality = np.nanmean(db, 0)
        loss = float(np.mean(losses))
        # nnU-Net keeps checkpoint_best by the EMA of mean_fg_dice (higher is better): a reconstruction score
        # 1/(1+MSE) makes that "lowest validation reconstruction error" and keeps progress.png meaningful
        self.logger.log("mean_fg_dice", 1.0 / (1.0 + loss), self.current_epoch)
        self.logger.log("dice_per_class_or_region", [float(1.0 / (1.0 + m)) for m in mse_per_modality],
                        self.current_epoch)
        self.logger.log("val_losses", loss, self.current_epoch)
        self.log_extra("val_mse_per_modality", [float(m) for m in mse_per_modality])
        self.log_extra("val_psnr_per_modality", [float(p) for p in psnr_per_modality])
        self.print_to_log_file("reconstruction MSE / PSNR per modality: " + ", ".join(
            f"{n} {m:.4f} / {p:.1f} dB" for n, m, p in zip(self.modality_names, mse_per_modality,
                                                            psnr_per_modality)))

    def perform_actual_validation(self, save_probabilities: bool = False):
        """No segmentation to validate: write reconstruction previews of a few validation cases instead."""
        if self.local_rank != 0:
            return
        from nnunet_allstage.previews import write_reconstruction_preview
        _, val_keys = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys)
        self.network.eval()
        for key in sorted(val_keys)[: self.allstage_config.preview_cases]:
            out = Path(self.output_folder) / f"reconstruction_preview_{key}.png"
            write_reconstruction_preview(self, dataset, key, out)
            self.print_to_log_file(f"reconstruction preview written: {out}")


class AllStageMAETrainer(MAETrainerMixin, AllStageTrainerBase):
    """Stage 1: the planned U-Net with an M-channel reconstruction head, deep supervision off, MASK(x) =
    MDrop + patch masking, Eq. 1 over the modalities available in the data, Adam + cosine decay."""

    stage_name = "stage 1 (MAE)"
    samples_unlabelled = True  # self-supervised: every training case, labelled or not
    own_options = ("mask_patch_size", "mask_ratio", "mae_lr", "mae_weight_decay")

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
        self.initial_lr = self.allstage_config.mae_lr
        self.weight_decay = self.allstage_config.mae_weight_decay

    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels, num_output_channels,
                                   enable_deep_supervision: bool = True):
        return build_mae_network(plans_manager, configuration_manager, num_input_channels)

    def configure_optimizers(self):
        return adam_cosine([{"params": list(self.network.parameters())}], self.initial_lr, self.weight_decay,
                           self.num_epochs)

    def set_deep_supervision_enabled(self, enabled: bool):
        pass  # the MAE has a single full-resolution output

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            data, available, _, _, reconstruction = self.mae_forward(batch)
            loss = reconstruction_loss(reconstruction, data, available)
        self.check_finite(L_rec=loss)
        self.optimizer_step(loss, self.network)
        return {"loss": loss.detach().cpu().numpy()}
