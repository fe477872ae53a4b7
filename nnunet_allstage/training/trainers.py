"""All plugin trainer classes; trainers/nnunet_allstage_trainers.py re-exports this module."""
__all__: list[str] = []
