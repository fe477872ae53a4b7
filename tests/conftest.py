"""Fixtures shared by the whole suite. What costs minutes is made once per session: one planned synthetic dataset
(`workspace`), the chain trained on it for one epoch per stage plus the baseline (`trained`), and a second planned
dataset that holds training cases without labels (`unlabelled_workspace`). A fixture that fails makes every test
that needs it fail (pytest reports an error), never skip."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BRATS2018_SAMPLE = SHARED / "data" / "brats2018_sample" / "MICCAI_BraTS_2018_Data_Training"
SMALL_SHAPE = (32, 36, 28)
DATASET_ID = 960  # the shared planned dataset
UNLABELLED_DATASET_ID = 961  # the shared dataset with training cases that have no labels
BIN = Path(sys.executable).parent
# two iterations per epoch and one validation iteration: every code path of a stage, in seconds
FAST = {"NNUNET_ALLSTAGE_ITERATIONS_PER_EPOCH": "2", "NNUNET_ALLSTAGE_VAL_ITERATIONS_PER_EPOCH": "1",
        "NNUNET_ALLSTAGE_CLIP_PRETRAINED": "random-test-only", "nnUNet_compile": "f", "nnUNet_def_n_proc": "2",
        # nnU-Net's validation at the end of training spawns its export workers (seconds of imports each time); stage
        # 2 of the shared chain and the residual-encoder run keep it, to prove it runs with our trainers
        "NNUNET_ALLSTAGE_FINAL_VALIDATION": "0"}
CHAIN = ("AllStageMAETrainer_1epoch", "AllStageHyperTrainer_1epoch", "AllStageMAEDATrainer_1epoch",
         "AllStageTrainer_1epoch")
BASELINE = "AllStageDropoutTrainer_1epoch"


FINGERPRINT_FOREGROUND_SAMPLES = 1e5


@pytest.fixture(scope="session", autouse=True)
def small_fingerprint_samples():
    """nnU-Net's fingerprint draws 10^8 foreground voxels in all for its intensity statistics, whatever the dataset's
    size, and sorts them per channel: most of a plan's time on the suite's tiny datasets, for statistics that only CT
    normalisation reads (every channel here is z-scored). Plans made in the test process draw 10^5."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    nnunet_init = DatasetFingerprintExtractor.__init__

    def init(self, *args, **kwargs):
        nnunet_init(self, *args, **kwargs)
        assert hasattr(self, "num_foreground_voxels_for_intensitystats"), "nnU-Net renamed its fingerprint sample size"
        self.num_foreground_voxels_for_intensitystats = FINGERPRINT_FOREGROUND_SAMPLES

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DatasetFingerprintExtractor, "__init__", init)
        yield


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


@dataclass
class Workspace:
    """A planned dataset in nnU-Net folders of its own: ``env`` is what a subprocess needs to use it."""
    root: Path
    env: dict
    dataset_id: int

    @property
    def raw(self) -> Path:
        return next((self.root / "nnUNet_raw").glob(f"Dataset{self.dataset_id}_*"))

    @property
    def preprocessed(self) -> Path:
        return next((self.root / "nnUNet_preprocessed").glob(f"Dataset{self.dataset_id}_*"))

    def output_folder(self, trainer: str, plans: str = "nnUNetPlans", configuration: str = "3d_fullres",
                      fold="0") -> Path:
        return self.root / "nnUNet_results" / self.raw.name / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"

    def test_case(self) -> str:
        return sorted(p.name[:-12] for p in (self.raw / "imagesTs").glob("*_0000.nii.gz"))[0]

    def train(self, trainer: str, *extra: str, env_extra: dict | None = None, check: bool = True
              ) -> subprocess.CompletedProcess:
        """nnUNetv2_train on fold 0 of this dataset, on the CPU, augmentation in the main process."""
        cmd = [str(BIN / "nnUNetv2_train"), str(self.dataset_id), "3d_fullres", "0", "-tr", trainer, "-device",
               "cpu", *extra]
        result = subprocess.run(cmd, env={**self.env, "nnUNet_n_proc_DA": "0", **(env_extra or {})},
                                capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{trainer} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def cli(self, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
        """The `nnunet-allstage` command a user types, as a process of its own in this workspace's environment."""
        result = subprocess.run([str(BIN / "nnunet-allstage"), *args], env={**self.env, **(env_extra or {})},
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise AssertionError(f"nnunet-allstage {' '.join(args)} failed:\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
        return result

    def main(self, *args: str) -> int:
        """`nnunet-allstage ARGS` through its entry point in the test's process (no interpreter start-up), in this
        workspace's environment; its exit status."""
        from nnunet_allstage.cli import main
        with pytest.MonkeyPatch.context() as mp:
            self.use(mp)
            return main(list(args))


    def use(self, monkeypatch) -> None:
        """This workspace's environment in the test's own process, for one test."""
        for k, v in self.env.items():
            monkeypatch.setenv(k, v)


def _workspace(tmp_path_factory, name: str, dataset_id: int) -> Workspace:
    from nnunet_allstage.environment import trainer_shim_dir
    root = tmp_path_factory.mktemp(name)
    env = {**os.environ, **FAST, "nnUNet_extTrainer": str(trainer_shim_dir()), "XDG_CACHE_HOME": str(root / "cache")}
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        env[folder] = str(root / folder)
    return Workspace(root, env, dataset_id)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, synthetic_src):
    """The synthetic cases converted at FM ratio 0.25 and planned with nnU-Net's default plans. The session's
    environment points at its nnU-Net folders while it lives (tests that need others set their own)."""
    from nnunet_allstage.cli import main
    from nnunet_allstage.conversion import convert_brats
    ws, mp = _workspace(tmp_path_factory, "workspace", DATASET_ID), pytest.MonkeyPatch()
    for k, v in ws.env.items():
        mp.setenv(k, v)
    convert_brats(synthetic_src, dataset_id=DATASET_ID, fm_ratio=0.25, seed=0, num_processes=2)
    mp.setenv("nnUNet_n_proc_DA", "0")  # would crash nnU-Net's planner; `plan` copes (test_planning checks)
    assert main(["plan", "-d", str(DATASET_ID), "-np", "2"]) == 0
    mp.delenv("nnUNet_n_proc_DA")
    yield ws
    mp.undo()


@pytest.fixture(scope="session")
def trained(workspace):
    """The four stages and the nnU-Net + MDrop baseline, one epoch each, through nnUNetv2_train (fold 0)."""
    for trainer in (*CHAIN, BASELINE):
        workspace.train(trainer, env_extra={"NNUNET_ALLSTAGE_FINAL_VALIDATION": "1"} if trainer == CHAIN[1] else None)
    return workspace


@pytest.fixture(scope="session")
def unlabelled_workspace(tmp_path_factory, synthetic_src):
    """Five labelled synthetic cases plus three in a folder of their own without label files, converted with
    `convert-brats --unlabelled-src` and planned with `plan`, through the command's entry point."""
    ws = _workspace(tmp_path_factory, "unlabelled", UNLABELLED_DATASET_ID)
    src, unlabelled = ws.root / "labelled_src", ws.root / "unlabelled_src"
    cases = sorted(p for p in synthetic_src.iterdir() if p.is_dir())
    for i, case in enumerate(cases):
        target = (unlabelled if i >= 5 else src) / case.name
        shutil.copytree(case, target)
        if i >= 5:
            next(target.glob("*_seg.nii.gz")).unlink()
    # in this process, where the fingerprint draws fewer samples
    assert ws.main("convert-brats", "--src", str(src), "--unlabelled-src", str(unlabelled), "-d",
                   str(UNLABELLED_DATASET_ID), "--fm-ratio", "0.25", "--seed", "0") == 0
    assert ws.main("plan", "-d", str(UNLABELLED_DATASET_ID)) == 0
    return ws
