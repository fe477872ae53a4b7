import numpy as np

from nnunet_allstage.synthetic import SEQUENCES, make_case

SHAPE = (32, 36, 28)


def test_deterministic_by_seed():
    a_img, a_seg = make_case(7, SHAPE)
    b_img, b_seg = make_case(7, SHAPE)
    c_img, c_seg = make_case(8, SHAPE)
    assert np.array_equal(a_seg, b_seg) and all(np.array_equal(a_img[s], b_img[s]) for s in SEQUENCES)
    assert not np.array_equal(a_img["t1"], c_img["t1"])


def test_modalities_differ_per_subregion():
    """Each sequence carries information the others lack: enhancing vs necrosis mainly in T1c, edema in
    FLAIR and T2, necrosis bright in T2; so dropping one removes real information."""
    for seed in range(4):
        img, seg = make_case(seed, SHAPE)
        assert set(np.unique(seg)) == {0, 1, 2, 4}
        brain = (img["t1"] > 0) & (seg == 0)
        mean = {s: {r: img[s][seg == v].mean() for r, v in (("ncr", 1), ("ed", 2), ("et", 4))} for s in SEQUENCES}
        for s in SEQUENCES:
            mean[s]["brain"] = img[s][brain].mean()
        # enhancing rim: far brighter than necrosis in T1c, much less so in T1
        assert mean["t1ce"]["et"] > 3 * mean["t1ce"]["ncr"]
        assert mean["t1"]["et"] < 2.5 * mean["t1"]["ncr"]
        assert mean["t1ce"]["et"] > 1.5 * mean["t1ce"]["brain"]
        # edema: bright in FLAIR and T2, not in T1/T1c
        assert mean["flair"]["ed"] > 1.8 * mean["flair"]["brain"]
        assert mean["t2"]["ed"] > 1.5 * mean["t2"]["brain"]
        assert mean["t1"]["ed"] < mean["t1"]["brain"]
        # necrosis: dark in T1c, bright in T2
        assert mean["t1ce"]["ncr"] < 0.5 * mean["t1ce"]["brain"]
        assert mean["t2"]["ncr"] > mean["t2"]["et"]
        # noise and bias: intensities vary within a tissue
        assert img["flair"][seg == 2].std() > 0.03 * mean["flair"]["ed"]
