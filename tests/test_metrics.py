import numpy as np
import pytest
from scipy.spatial import cKDTree

from nnunet_allstage.metrics import BRATS_MAX_HD95, dice, hd95, region_metrics, regions_from_dataset_json


def brute_force_hd95(a, b, spacing):
    """Independent implementation: surface voxels by 6-neighbourhood test, distances by a k-d tree."""
    def surface(m):
        pts = []
        for idx in np.argwhere(m):
            for axis in range(3):
                for step in (-1, 1):
                    n = idx.copy()
                    n[axis] += step
                    if (n < 0).any() or (n >= m.shape).any() or not m[tuple(n)]:
                        pts.append(idx)
                        break
                else:
                    continue
                break
        return np.unique(np.array(pts), axis=0) * np.asarray(spacing)
    sa, sb = surface(a), surface(b)
    d_ab = cKDTree(sb).query(sa)[0]
    d_ba = cKDTree(sa).query(sb)[0]
    return np.percentile(np.concatenate([d_ab, d_ba]), 95)


def test_empty_conventions():
    e = np.zeros((5, 5, 5), bool)
    f = e.copy()
    f[2, 2, 2] = True
    assert dice(e, e) == 1.0 and hd95(e, e, (1, 1, 1)) == 0.0
    assert dice(f, e) == 0.0 and hd95(f, e, (1, 1, 1)) == BRATS_MAX_HD95
    assert dice(e, f) == 0.0 and hd95(e, f, (1, 1, 1)) == BRATS_MAX_HD95


def test_hand_computed_dice_and_shifted_cubes_anisotropic():
    a = np.zeros((20, 20, 20), bool)
    b = np.zeros_like(a)
    a[5:10, 5:10, 5:10] = True
    b[7:12, 5:10, 5:10] = True  # shifted by 2 voxels along axis 0
    assert dice(a, b) == pytest.approx(2 * 75 / 250)
    # every surface point is at most 2 voxels from the other surface along axis 0: spacing 3 mm there -> 6 mm
    assert hd95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_hd95_matches_independent_implementation():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = np.zeros((16, 18, 14), bool)
        b = np.zeros_like(a)
        for m in (a, b):
            c = rng.integers(4, 10, 3)
            r = rng.integers(2, 5, 3)
            zz, yy, xx = np.ogrid[:16, :18, :14]
            m |= ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        spacing = tuple(rng.uniform(0.5, 3.0, 3))
        assert hd95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing), rel=1e-6)


def test_hd95_exact_when_masks_touch_the_border_or_lie_far_apart():
    """hd95 crops to the masks' bounding box: results must equal the uncropped reference in the corner cases."""
    a = np.zeros((30, 12, 40), bool)
    b = np.zeros_like(a)
    a[0:4, 0:5, 0:6] = True          # touches three faces of the volume
    b[25:30, 7:12, 30:40] = True     # the opposite corner
    b[2:6, 3:8, 2:5] = True          # and a piece overlapping a
    for spacing in [(1.0, 1.0, 1.0), (2.5, 0.8, 1.2)]:
        assert hd95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing), rel=1e-6)
        assert hd95(b, a, spacing) == pytest.approx(brute_force_hd95(b, a, spacing), rel=1e-6)
    full = np.ones((6, 7, 8), bool)   # a mask filling the whole volume: its surface is the volume's faces
    small = np.zeros_like(full)
    small[2:4, 3:5, 3:6] = True
    assert hd95(full, small, (1, 1, 1)) == pytest.approx(brute_force_hd95(full, small, (1, 1, 1)), rel=1e-6)


def test_brats_regions():
    dj = {"labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]},
          "regions_class_order": [1, 2, 3]}
    regions = regions_from_dataset_json(dj)
    assert [r for r, _ in regions] == ["WT", "TC", "ET"]
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3] = 1
    ref[3:4] = 2
    ref[4:5] = 3
    pred = ref.copy()
    pred[4:5] = 2  # enhancing predicted as necrosis: WT and TC perfect, ET missed
    m = region_metrics(pred, ref, (1, 1, 1), regions)
    assert m["WT"] == (1.0, 0.0) and m["TC"][0] == 1.0 and m["ET"] == (0.0, BRATS_MAX_HD95)


def test_summary_means_by_hand_and_the_heatmaps(tmp_path):
    from nnunet_allstage.evaluation import summarise, write_outputs
    codes = [(1, 0), (0, 1), (1, 1)]
    names = ["A", "B"]
    rows = []
    for model, offset in (("m1", 0.0), ("m2", 0.1)):
        for case, base in (("c1", 0.2), ("c2", 0.4)):
            for code, extra in zip(codes, (0.0, 0.2, 0.4)):
                label = "+".join(n for n, a in zip(names, code) if a)
                for region, shift in (("WT", 0.0), ("ET", -0.1)):
                    rows.append({"model": model, "case": case, "combination": label, "available": "", "region": region,
                                 "dice": base + extra + offset + shift, "hd95": 10 * (base + extra)})
    summary = summarise(rows, ["m1", "m2"], codes, names, ["WT", "ET"])
    assert summary["combinations"] == ["A", "B", "A+B"] and summary["num_cases"] == 2
    wt = summary["models"]["m1"]["WT"]
    assert np.allclose(wt["dice"], [0.3, 0.5, 0.7]) and np.allclose(wt["hd95"], [3.0, 5.0, 7.0])
    assert np.isclose(wt["mean_dice"], 0.5)
    assert np.isclose(summary["models"]["m2"]["average"]["mean_dice"], (0.6 + 0.5) / 2)
    write_outputs(rows, summary, tmp_path, names)
    assert (tmp_path / "results.csv").read_text().splitlines()[0] == "model,case,combination,available,region,dice,hd95"
    assert len((tmp_path / "results.csv").read_text().splitlines()) == len(rows) + 1
    assert (tmp_path / "dice_heatmap.png").stat().st_size > 1000 and (tmp_path / "hd95_heatmap.png").is_file()
    assert "| WT | m2 |" in (tmp_path / "table.md").read_text()


def test_synthesis_similarity_by_hand():
    from nnunet_allstage.synthesis import similarity
    rng = np.random.default_rng(0)
    real = rng.uniform(100, 200, (20, 20, 20)).astype(np.float32)
    brain = np.zeros(real.shape, bool)
    brain[2:18, 2:18, 2:18] = True
    psnr, ssim = similarity(real, real.copy(), brain)
    assert psnr == pytest.approx(100.0) and ssim == pytest.approx(1.0)
    lo, hi = np.percentile(real[brain], [0.5, 99.5])
    # an offset of a tenth of the percentile range: scaled error 0.1 wherever neither image is clipped
    shifted = real + 0.1 * (hi - lo)
    a = np.clip((real - lo) / (hi - lo), 0, 1)[brain]
    b = np.clip((shifted - lo) / (hi - lo), 0, 1)[brain]
    expected = 10 * np.log10(1 / np.mean((a - b) ** 2))
    psnr, ssim = similarity(real, shifted, brain)
    assert psnr == pytest.approx(expected, rel=1e-6) and 19 < psnr < 21.5 and ssim < 1


def test_lesionwise_metrics_by_hand_through_the_official_package(tmp_path):
    """Two enhancing lesions in the reference; the prediction finds one (exactly, then shifted by a voxel), misses
    the other, adds a spurious enhancing blob and an edema-only blob (nnU-Net's label values: edema 1, enhancing 3)."""
    from nnunet_allstage.lesionwise import lesionwise_metrics, load_evaluator
    from nnunet_allstage.metrics import BRATS_MAX_HD95
    regions = ["WT", "TC", "ET"]
    evaluator = load_evaluator(regions)
    reference = np.zeros((40, 40, 40), np.uint8)
    reference[5:10, 5:10, 5:10] = 3
    reference[25:30, 25:30, 25:30] = 3
    prediction = np.zeros_like(reference)
    prediction[5:10, 5:10, 5:10] = 3
    prediction[5:10, 25:30, 5:10] = 3  # spurious enhancing lesion
    prediction[30:35, 5:10, 30:35] = 1  # spurious edema: a whole-tumour lesion only
    m = lesionwise_metrics(evaluator, prediction, reference, (1.0, 1.0, 1.0), regions)
    for region in ("TC", "ET"):  # TP 1, FP 1, FN 1
        assert m[region]["lesion_dice"] == pytest.approx(1.0) and m[region]["lesion_hd95"] == pytest.approx(0.0)
        assert m[region]["lesion_f1"] == pytest.approx(2 / (2 + 1 + 1))
    assert m["WT"]["lesion_f1"] == pytest.approx(2 / (2 + 2 + 1))  # the edema blob is one more FP

    shifted = np.zeros_like(reference)
    shifted[6:11, 5:10, 5:10] = 3  # overlap 4 x 5 x 5 of 125 voxels each: Dice 200 / 250
    m = lesionwise_metrics(evaluator, shifted, reference, (1.0, 1.0, 1.0), regions)
    assert m["ET"]["lesion_dice"] == pytest.approx(0.8)
    assert m["ET"]["lesion_f1"] == pytest.approx(2 / (2 + 0 + 1))

    empty = np.zeros_like(reference)
    only_prediction = lesionwise_metrics(evaluator, prediction, empty, (1.0, 1.0, 1.0), regions)["ET"]
    assert only_prediction["lesion_dice"] == 0 and only_prediction["lesion_hd95"] == BRATS_MAX_HD95
    both_empty = lesionwise_metrics(evaluator, empty, empty, (1.0, 1.0, 1.0), regions)["ET"]
    assert np.isnan(both_empty["lesion_dice"])  # the package's convention: no value, left out of means

    with pytest.raises(Exception, match="BraTS glioma regions"):
        load_evaluator(["foreground"])
