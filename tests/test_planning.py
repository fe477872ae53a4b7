import json
import shutil

import numpy as np
import pytest

from nnunet_allstage.cli import main
from nnunet_allstage.conversion import convert_brats
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.modalities import read_availability
from nnunet_allstage.planning import FINGERPRINT_SOURCE_FILE, check_preprocessed_availability, fingerprint_is_current


def test_plan_synthetic_writes_splits_and_checks_availability(workspace):
    """The session's dataset, planned through `nnunet-allstage plan` with nnUNet_n_proc_DA=0 (which would crash
    nnU-Net's planner; plan copes)."""
    pre = workspace.preprocessed
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
    assert main(["plan", "-d", "921", "--target-spacing", "1.5", "1.5", "1.5", "-np", "2"]) == 0
    pre = nnunet_env / "nnUNet_preprocessed" / "Dataset921_Three"
    plans = json.loads((pre / "nnUNetPlans_1.5mm.json").read_text())
    assert plans["configurations"]["3d_fullres"]["spacing"] == [1.5, 1.5, 1.5]
    assert (pre / "nnUNetPlans_1.5mm_3d_fullres").is_dir()


def test_fingerprint_is_taken_again_only_when_a_raw_file_changed(tmp_path, workspace):
    """The session's dataset was planned once (fingerprint and its source recorded); on a copy, every kind of change
    to the raw folder makes the fingerprint stale."""
    import os
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    shutil.copytree(workspace.raw, raw)  # copytree keeps modification times, so the copy is the same raw state
    pre.mkdir()
    for name in ("dataset_fingerprint.json", FINGERPRINT_SOURCE_FILE):
        shutil.copy(workspace.preprocessed / name, pre)
    assert fingerprint_is_current(raw, pre)
    image = next((raw / "imagesTr").glob("*_0000.nii.gz"))
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # rewritten in place, same size
    assert not fingerprint_is_current(raw, pre)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint_is_current(raw, pre)
    (raw / "imagesTr" / "extra_0000.nii.gz").write_bytes(b"")  # a file added
    assert not fingerprint_is_current(raw, pre)
    (raw / "imagesTr" / "extra_0000.nii.gz").unlink()
    assert fingerprint_is_current(raw, pre)
    (pre / FINGERPRINT_SOURCE_FILE).write_text("{not json")  # an unreadable record: take the fingerprint again
    assert not fingerprint_is_current(raw, pre)
    shutil.copy(workspace.preprocessed / FINGERPRINT_SOURCE_FILE, pre)
    (pre / "dataset_fingerprint.json").unlink()
    assert not fingerprint_is_current(raw, pre)


def test_plan_errors(nnunet_env, capsys):
    assert main(["plan", "-d", "977"]) == 2
    assert "no dataset with id 977" in capsys.readouterr().err


@pytest.mark.slow
def test_plan_real_sample_coarse(nnunet_env, brats_sample):
    """Three real cases (full-size BraTS volumes) planned at 3 mm."""
    src = nnunet_env / "sample"
    src.mkdir()
    for case in sorted(brats_sample.glob("HGG/*"))[:2] + sorted(brats_sample.glob("LGG/*"))[:1]:
        (src / case.parent.name).mkdir(exist_ok=True)
        (src / case.parent.name / case.name).symlink_to(case, target_is_directory=True)
    convert_brats(src, dataset_id=901, fm_ratio=0.25, seed=0, num_processes=2)
    assert main(["plan", "-d", "901", "--target-spacing", "3", "3", "3", "-np", "2"]) == 0
    pre = next((nnunet_env / "nnUNet_preprocessed").glob("Dataset901_*"))
    plans = json.loads((pre / "nnUNetPlans_3mm.json").read_text())
    assert plans["configurations"]["3d_fullres"]["spacing"] == [3.0, 3.0, 3.0]
    assert len(list((pre / "nnUNetPlans_3mm_3d_fullres").glob("*.pkl"))) == len(read_availability(pre)["cases"])


def test_trainer_finds_or_derives_availability(workspace, nnunet_env):
    """Planned with stock nnU-Net (no JSON in nnUNet_preprocessed): the trainer copies the converter's record;
    with no record at all it derives one from the zero channels of the preprocessed arrays. On a copy of the
    session's planned dataset."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    raw = nnunet_env / "nnUNet_raw" / workspace.raw.name
    pre = nnunet_env / "nnUNet_preprocessed" / workspace.preprocessed.name
    shutil.copytree(workspace.raw, raw)
    shutil.copytree(workspace.preprocessed, pre)
    expected = read_availability(raw)["cases"]
    for remove_raw in (False, True):
        (pre / "modality_availability.json").unlink()
        if remove_raw:
            (raw / "modality_availability.json").unlink()
        trainer = get_trainer_from_args(str(workspace.dataset_id), "3d_fullres", 0, "AllStageDropoutTrainer",
                                        device=torch.device("cpu"))
        trainer.initialize()
        got = read_availability(pre)["cases"]
        assert got == expected
        assert trainer.batch_availability(list(expected)).tolist() == [expected[k] for k in expected]
