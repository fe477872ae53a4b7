"""The GPU check script runs on the CPU (its numbers are measurements for the documentation, never asserted)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_gpu_check_runs_on_the_cpu(workspace, tmp_path):
    """On the shared planned dataset (its untrained models in a folder of the script's own), stock and stage 4."""
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--device", "cpu", "--tiny",
                             "-d", str(workspace.dataset_id), "--workdir", str(tmp_path), "--trainers",
                             "nnUNetTrainer", "AllStageTrainer"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=900, env=workspace.env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for name in ("nnUNetTrainer", "AllStageTrainer"):  # a row with ms/it, ratio and peak memory
        assert re.search(rf"^{name}\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+", out, re.M), out
    for name in ("nnUNetv2_predict, stock model", "nnUNetv2_predict, AllStageTrainer",
                 "nnunet-allstage predict, AllStageTrainer"):
        assert re.search(rf"^{re.escape(name)}\s+ratio to stock\s+[\d.]+$", out, re.M), out
    assert (tmp_path / "tiny" / "predictions").is_dir()
    assert not any((workspace.root / "nnUNet_results").rglob("nnUNetTrainer__*"))  # the user's results untouched
