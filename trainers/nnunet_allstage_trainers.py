"""The folder that nnUNet_extTrainer points to (shipped in the wheel as nnunet_allstage.trainer_shim)."""
# nnU-Net imports every module of the nnUNet_extTrainer folder under its bare file name and then drops it
# from sys.modules; re-exporting keeps the classes in nnunet_allstage, so they pickle and spawn correctly.
from nnunet_allstage.training import trainer_classes

globals().update(trainer_classes())
