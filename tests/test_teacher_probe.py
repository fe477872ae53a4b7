"""The teacher probe's summary by hand (scripts/studies/teacher_probe.py; the models themselves:
tests/test_stages_integration.py)."""
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "studies"))
from teacher_probe import format_probe_summary, probe_summary  # noqa: E402


def test_probe_summary_by_hand():
    dice = {  # (model, case, markers): (WT, TC)
        ("A", "c1", "●○○○"): (0.5, 0.3), ("A", "c2", "●○○○"): (0.6, 0.4),
        ("A", "c1", "●●●●"): (0.8, 0.6), ("A", "c2", "●●●●"): (0.9, 0.7),
        ("B", "c1", "●○○○"): (0.6, 0.4), ("B", "c2", "●○○○"): (0.5, 0.5),
        ("B", "c1", "●●●●"): (0.7, 0.7), ("B", "c2", "●●●●"): (0.7, 0.7)}
    results = pd.DataFrame([{"model": m, "case": c, "available": a, "region": region, "dice": d}
                            for (m, c, a), values in dice.items() for region, d in zip(("WT", "TC"), values)])
    a, b = probe_summary(results, "A")
    assert a == {"model": "A", "incomplete": pytest.approx(0.45), "complete": pytest.approx(0.75)}
    # per case on the incomplete combination: c1 0.5 - 0.4 = +0.1, c2 0.5 - 0.5 = 0
    assert b["incomplete"] == pytest.approx(0.5) and b["complete"] == pytest.approx(0.7)
    assert b["delta"] == pytest.approx(0.05) and b["se"] == pytest.approx(0.05) and (b["wins"], b["cases"]) == (1, 2)
    table = format_probe_summary([a, b])
    assert "| B | 50.0 | 70.0 | +5.0 ± 5.0 | 1/2 |" in table and "| A | 45.0 | 75.0 | – | – |" in table
