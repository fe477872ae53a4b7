"""The folder that nnUNet_extTrainer points to (shipped in the wheel as nnunet_allstage.trainer_shim)."""
