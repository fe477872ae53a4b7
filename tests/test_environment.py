import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _env_output(extra_env: dict, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_")}
    env.update(extra_env)
    return subprocess.run([sys.executable, "-m", "nnunet_allstage.cli", "env"], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True).stdout


def _shim_from(output: str) -> Path:
    line = next(l for l in output.splitlines() if l.startswith("export nnUNet_extTrainer="))
    return Path(line.split("=", 1)[1].strip("'\""))


def _assert_trainer_found(shim: Path, extra_env: dict, cwd: Path):
    """nnU-Net's own lookup finds our trainer through the shim, and the class pickles (spawned workers)."""
    code = ("import pickle; from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f;"
            "c = f('AllStageDropoutTrainer'); print(c.__module__); pickle.dumps(c)")
    env = {**os.environ, **extra_env, "nnUNet_extTrainer": str(shim)}
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, check=True, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1].startswith("nnunet_allstage.")


def test_env_editable_install(tmp_path):
    out = _env_output({}, tmp_path)
    shim = _shim_from(out)
    assert shim == (REPO / "trainers").resolve()
    assert (shim / "nnunet_allstage_trainers.py").is_file()
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert f"export {name}=" in out
    out = _env_output({"nnUNet_raw": "/somewhere"}, tmp_path)
    assert "export nnUNet_raw=" not in out  # already set: not printed
    _assert_trainer_found(shim, {}, tmp_path)


def test_env_wheel_install(tmp_path):
    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO),
                    "-w", str(wheel_dir)], check=True, capture_output=True)
    wheel = next(wheel_dir.glob("nnunet_allstage-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {"PYTHONPATH": str(target)}  # the wheel's copy comes before the editable install
    shim = _shim_from(_env_output(env, tmp_path))
    assert shim == (target / "nnunet_allstage" / "trainer_shim").resolve()
    assert (shim / "nnunet_allstage_trainers.py").is_file()
    _assert_trainer_found(shim, env, tmp_path)


FAULTS_OF_A_SECOND_ALLOCATION = """
import resource, sys
import numpy as np
from nnunet_allstage.environment import keep_freed_memory_in_process
if sys.argv[1] == "keep":
    assert keep_freed_memory_in_process()
a = np.ones(64 * 2 ** 20 // 8)  # 64 MB, above glibc's largest mmap threshold: an activation-sized block
del a
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
a = np.ones(64 * 2 ** 20 // 8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_freed_memory_kept_in_the_process_needs_no_fresh_pages():
    """What our trainers set on the CPU: a freed activation-sized block is reused, where glibc's default maps 64 MB
    of fresh pages again (at least one page fault per 2 MB huge page, 16000 with 4 kB pages)."""
    if not sys.platform.startswith("linux"):
        import pytest
        pytest.skip("glibc's mallopt: Linux only")
    faults = {mode: int(subprocess.run([sys.executable, "-c", FAULTS_OF_A_SECOND_ALLOCATION, mode], check=True,
                                       capture_output=True, text=True).stdout) for mode in ("glibc", "keep")}
    assert faults["glibc"] >= 32 and faults["keep"] < faults["glibc"] / 10, faults
