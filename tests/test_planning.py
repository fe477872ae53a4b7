import json
import shutil

import numpy as np
import pytest

from nnunet_allstage.cli import main
from nnunet_allstage.conversion import convert_brats
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.modalities import read_availability
from nnunet_allstage.planning import check_preprocessed_availability


def test_plan_synthetic_writes_splits_and_checks_availability(nnunet_env, synthetic_src, monkeypatch):
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # would crash nnU-Net's planner; plan must cope
    convert_brats(synthetic_src, dataset_id=920, fm_ratio=0.25, seed=1, num_processes=1)
    assert main(["plan", "-d", "920", "-np", "2"]) == 0
    pre = nnunet_env / "nnUNet_preprocessed" / "Dataset920_BraTS2020_FM25"
    rec = read_availability(pre)
    splits = json.loads((pre / "splits_final.json").read_text())
    assert splits == [{"train": sorted(rec["split"]["train"]), "val": sorted(rec["split"]["val"])}]
    data_folder = pre / "nnUNetPlans_3d_fullres"
    check_preprocessed_availability(rec, data_folder)
    # a wrong record is caught, naming the case
    case, code = next((k, v) for k, v in rec["cases"].items() if not all(v))
    bad = json.loads(json.dumps(rec))
    bad["cases"][case] = [1] * len(code)
    with pytest.raises(AllStageError, match=case):
        check_preprocessed_availability(bad, data_folder)


def test_plan_coarse_spacing_three_modalities(nnunet_env, synthetic_src):
    import SimpleITK as sitk
    root = nnunet_env / "study"
    for i in range(1, 7):
        case = root / f"p{i}"
        case.mkdir(parents=True)
        src = synthetic_src / f"BraTS20_Training_{i:03d}"
        for s in ("t2", "flair", "t1"):
            shutil.copy(src / f"BraTS20_Training_{i:03d}_{s}.nii.gz", case / f"{s}.nii.gz")
        img = sitk.ReadImage(str(src / f"BraTS20_Training_{i:03d}_seg.nii.gz"))
        o = sitk.GetImageFromArray((sitk.GetArrayFromImage(img) > 0).astype(np.uint8))
        o.CopyInformation(img)
        sitk.WriteImage(o, str(case / "seg.nii.gz"))
    assert main(["convert-folder", "--src", str(root), "-d", "921", "--name", "Three", "--modality", "T2=t2.nii.gz",
                 "--modality", "FLAIR=flair.nii.gz", "--modality", "T1=t1.nii.gz", "--label", "seg.nii.gz",
                 "--fm-ratio", "0.34", "-np", "1"]) == 0
    assert main(["plan", "-d", "921", "--target-spacing", "2", "2", "2", "-np", "2"]) == 0
    pre = nnunet_env / "nnUNet_preprocessed" / "Dataset921_Three"
    plans = json.loads((pre / "nnUNetPlans_2mm.json").read_text())
    assert plans["configurations"]["3d_fullres"]["spacing"] == [2.0, 2.0, 2.0]
    assert (pre / "nnUNetPlans_2mm_3d_fullres").is_dir()


def test_plan_errors(nnunet_env, capsys):
    assert main(["plan", "-d", "977"]) == 2
    assert "no dataset with id 977" in capsys.readouterr().err


@pytest.mark.slow
def test_plan_real_sample_coarse(nnunet_env, brats_sample):
    convert_brats(brats_sample, dataset_id=901, fm_ratio=0.25, seed=0, num_processes=2)
    assert main(["plan", "-d", "901", "--target-spacing", "3", "3", "3", "-np", "2"]) == 0
    pre = next((nnunet_env / "nnUNet_preprocessed").glob("Dataset901_*"))
    plans = json.loads((pre / "nnUNetPlans_3mm.json").read_text())
    assert plans["configurations"]["3d_fullres"]["spacing"] == [3.0, 3.0, 3.0]


def test_trainer_finds_or_derives_availability(nnunet_env, synthetic_src):
    """Planned with stock nnU-Net (no JSON in nnUNet_preprocessed): the trainer copies the converter's record;
    with no record at all it derives one from the zero channels of the preprocessed arrays."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    convert_brats(synthetic_src, dataset_id=922, fm_ratio=0.25, seed=2, num_processes=1)
    assert main(["plan", "-d", "922", "-np", "2"]) == 0
    pre = next((nnunet_env / "nnUNet_preprocessed").glob("Dataset922_*"))
    raw = next((nnunet_env / "nnUNet_raw").glob("Dataset922_*"))
    expected = read_availability(raw)["cases"]
    for remove_raw in (False, True):
        (pre / "modality_availability.json").unlink()
        if remove_raw:
            (raw / "modality_availability.json").unlink()
        trainer = get_trainer_from_args("922", "3d_fullres", 0, "AllStageDropoutTrainer", device=torch.device("cpu"))
        trainer.initialize()
        got = read_availability(pre)["cases"]
        assert got == expected
        assert trainer.batch_availability(list(expected)).tolist() == [expected[k] for k in expected]
