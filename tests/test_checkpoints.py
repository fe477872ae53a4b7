"""Loading checkpoints without running code, and what a checkpoint says about itself."""
import pathlib

import numpy as np
import pytest
import torch

from nnunet_allstage.checkpoints import RANDOM_CLIP_MARK, is_random_clip, provenance, safe_load
from nnunet_allstage.errors import AllStageError


class _RunsCodeWhenLoaded:
    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"network_weights": {"w": torch.ones(2)}, "payload": _RunsCodeWhenLoaded(marker)}, tmp_path / "evil.pth")
    assert not marker.exists()
    with pytest.raises(AllStageError, match="refusing to load .*evil.pth.*Only load checkpoints you trust"):
        safe_load(tmp_path / "evil.pth")
    assert not marker.exists()
    torch.load(tmp_path / "evil.pth", weights_only=False)  # what an unsafe loader does with the same file
    assert marker.exists()


def test_nnunet_checkpoint_content_loads(tmp_path):
    """nnU-Net's logging holds numpy scalars (EMA Dice, per-class Dice); they are on the allow-list."""
    logging = {"ema_fg_dice": [np.float64(0.5), np.float32(0.25)], "dice_per_class_or_region": [[np.float64(1.0)]],
               "epoch_start_timestamps": [np.float64(3.0)], "class_locations": np.arange(3)}
    checkpoint = {"network_weights": {"w": torch.ones(2)}, "logging": logging, "_best_ema": np.float64(0.5),
                  "init_args": {"fold": 0}, "allstage": {"stage": "stage 2", "options": {"mask_ratio": 0.875},
                                                         "code_table": f"{RANDOM_CLIP_MARK} ViT-B-32"}}
    torch.save(checkpoint, tmp_path / "ok.pth")
    loaded = safe_load(tmp_path / "ok.pth")
    assert loaded["logging"]["ema_fg_dice"][1] == np.float32(0.25)
    assert np.array_equal(loaded["logging"]["class_locations"], np.arange(3))
    record = provenance({**loaded, "trainer_name": "AllStageHyperTrainer"})
    assert record["stage"] == "stage 2" and record["options"] == {"mask_ratio": 0.875} and is_random_clip(record)
    assert not is_random_clip({"code_table": "CLIP ViT-B-32 (openai)"}) and not is_random_clip({"code_table": None})


def test_missing_and_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(AllStageError, match="does not exist"):
        safe_load(tmp_path / "absent.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(AllStageError, match="not an nnU-Net checkpoint"):
        safe_load(tmp_path / "other.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "other.pth").read_bytes()[:40])
    with pytest.raises(AllStageError, match="refusing to load"):
        safe_load(tmp_path / "cut.pth")


def test_option_differences_name_what_differs():
    from nnunet_allstage.config import AllStageConfig, check_same_options, option_differences
    current = AllStageConfig(mask_ratio=0.5)
    assert option_differences({"mask_ratio": 0.875, "beta_kd": 9}, current, ["mask_ratio"]) == \
        ["mask_ratio: 0.875 -> 0.5"]
    # an option the checkpoint does not record is unknown, not today's default
    assert option_differences({}, AllStageConfig(), ["student_init"]) == ["student_init: not recorded -> 'stage3'"]
    with pytest.raises(AllStageError, match=r"stage 1 \(x.pth\) was trained with other options "
                                            r"\(mask_ratio: 0.875 -> 0.5\): retrain it"):
        check_same_options({"mask_ratio": 0.875}, current, ["mask_ratio"], "stage 1 (x.pth)", "retrain it")
