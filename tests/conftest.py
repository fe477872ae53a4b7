from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BRATS2018_SAMPLE = SHARED / "data" / "brats2018_sample" / "MICCAI_BraTS_2018_Data_Training"
SMALL_SHAPE = (32, 36, 28)


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    """Fresh nnU-Net folders and the trainer shim for one test."""
    from nnunet_allstage.environment import trainer_shim_dir
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("nnUNet_extTrainer", str(trainer_shim_dir()))
    monkeypatch.setenv("nnUNet_def_n_proc", "2")
    monkeypatch.setenv("nnUNet_compile", "f")
    return tmp_path


@pytest.fixture
def brats_sample():
    if not BRATS2018_SAMPLE.is_dir():
        pytest.skip(f"the real BraTS 2018 sample is not here ({BRATS2018_SAMPLE}); it lives in the project's shared/")
    return BRATS2018_SAMPLE


@pytest.fixture(scope="session")
def synthetic_src(tmp_path_factory):
    """Eight small synthetic cases in the BraTS 2020 layout (read-only: copy before modifying)."""
    from nnunet_allstage.synthetic import write_synthetic_brats
    return write_synthetic_brats(tmp_path_factory.mktemp("synthetic"), num_cases=8, seed=0, shape=SMALL_SHAPE)
