"""nnU-Net v2 plugin for segmentation with missing modalities at every stage (training and test)."""
__version__ = "0.1.0"
