"""The benchmark scripts run (their numbers are measurements for README, never asserted)."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_gpu_check_runs_on_the_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPTS / "gpu_check.py"), "--device", "cpu", "--tiny",
                             "--workdir", str(tmp_path), "--trainers", "nnUNetTrainer", "AllStageTrainer"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for name in ("nnUNetTrainer", "AllStageTrainer"):  # a row with ms/it, ratio and peak memory
        assert re.search(rf"^{name}\s+[\d.]+\s+[\d.]+\s+\d+\s+[\d.]+", out, re.M), out
    for name in ("nnUNetv2_predict, stock model", "nnUNetv2_predict, AllStageTrainer",
                 "nnunet-allstage predict, AllStageTrainer"):
        assert re.search(rf"^{re.escape(name)}\s+ratio to stock\s+[\d.]+$", out, re.M), out
    assert (tmp_path / "tiny" / "predictions").is_dir()
