import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_allstage.cli import main
from nnunet_allstage.conversion import convert_brats
from nnunet_allstage.conversion.sources import brats_layout, detect_brats_year, discover_brats_cases
from nnunet_allstage.conversion.splits import load_split
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.modalities import (BRATS_MODALITIES, read_availability, simulate_full_modality_ratio,
                                        simulate_missing_modalities)

LEGACY_SUFFIX = {"FLAIR": "flair", "T1": "t1", "T1c": "t1ce", "T2": "t2"}


def _arr(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _dataset(root: Path, dataset_id: int) -> Path:
    hits = list((root / "nnUNet_raw").glob(f"Dataset{dataset_id:03d}_*"))
    assert len(hits) == 1, hits
    return hits[0]


def _nothing_left(root: Path):
    raw = root / "nnUNet_raw"
    return not raw.exists() or not any(raw.iterdir())


def test_convert_real_sample_with_split_and_fm_ratio(nnunet_env, brats_sample):
    convert_brats(brats_sample, dataset_id=901, split=load_split("brats2018"), fm_ratio=0.25, seed=0,
                  num_processes=2)
    ds = _dataset(nnunet_env, 901)
    rec = read_availability(ds)
    # the sample holds 7 train, 1 val and 4 test cases of the public split 3
    assert len(rec["split"]["train"]) == 7 and len(rec["split"]["val"]) == 1 and len(rec["split"]["test"]) == 4
    trainval = rec["split"]["train"] + rec["split"]["val"]
    assert sorted(rec["cases"]) == sorted(trainval)
    # the FM ratio is drawn over the training subjects, the validation subjects separately with the same rule
    n_full_train = sum(all(rec["cases"][c]) for c in rec["split"]["train"])
    assert n_full_train == round(0.25 * 7) == len(rec["simulation"]["full_modality_train_cases"])
    assert all(all(rec["cases"][c]) for c in rec["split"]["val"])  # max(1, round(0.25 * 1))
    for case, dropped in rec["simulation"]["dropped"].items():
        assert 1 <= len(dropped) <= 3
        assert [m not in dropped for m in BRATS_MODALITIES] == [bool(a) for a in rec["cases"][case]]

    sources = {c.case_id: c for c in discover_brats_cases(brats_sample, brats_layout("2018"))}
    for case, code in list(rec["cases"].items()) + list(rec["test_cases"].items()):
        folder = "imagesTr" if case in rec["cases"] else "imagesTs"
        for ch, modality in enumerate(BRATS_MODALITIES):
            out = _arr(ds / folder / f"{case}_{ch:04d}.nii.gz")
            src = _arr(sources[case].modality_files[modality])
            if code[ch]:
                assert np.array_equal(out, src), (case, modality)
            else:
                assert not out.any(), (case, modality)
        label_folder = "labelsTr" if case in rec["cases"] else "labelsTs"
        seg = _arr(ds / label_folder / f"{case}.nii.gz")
        src_seg = _arr(sources[case].label_file)
        assert set(np.unique(seg)) <= {0, 1, 2, 3}
        assert np.array_equal(seg == 1, src_seg == 2) and np.array_equal(seg == 2, src_seg == 1)
        assert np.array_equal(seg == 3, src_seg == 4)
    assert all(all(v) for v in rec["test_cases"].values())

    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T1c", "3": "T2"}
    assert dj["regions_class_order"] == [1, 2, 3] and dj["numTraining"] == 8
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(ds), num_processes=2)  # raises on failure


def test_year_detection_of_other_layouts(tmp_path, synthetic_src):
    assert detect_brats_year(synthetic_src) == "2020"
    # BraTS 2023 naming: BraTS-GLI-XXXXX-XXX-{t2f,t1n,t1c,t2w,seg}, labels 1/2/3
    gli = tmp_path / "gli"
    case = gli / "BraTS-GLI-00001-000"
    case.mkdir(parents=True)
    src = synthetic_src / "BraTS20_Training_001"
    for old, new in (("flair", "t2f"), ("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w")):
        shutil.copy(src / f"BraTS20_Training_001_{old}.nii.gz", case / f"BraTS-GLI-00001-000-{new}.nii.gz")
    seg = sitk.ReadImage(str(src / "BraTS20_Training_001_seg.nii.gz"))
    arr = sitk.GetArrayFromImage(seg)
    arr[arr == 4] = 3
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(seg)
    sitk.WriteImage(out, str(case / "BraTS-GLI-00001-000-seg.nii.gz"))
    assert detect_brats_year(gli) == "2023"


@pytest.mark.parametrize("year,make", [
    ("2018", lambda c: (f"HGG/Brats18_X_{c}_1", f"Brats18_X_{c}_1_{{s}}.nii.gz")),
    ("2021", lambda c: (f"BraTS2021_{c:05d}", f"BraTS2021_{c:05d}_{{s}}.nii.gz")),
    ("2023", lambda c: (f"BraTS-GLI-{c:05d}-000", f"BraTS-GLI-{c:05d}-000-{{s}}.nii.gz")),
])
def test_layouts_of_other_years_convert(nnunet_env, synthetic_src, year, make):
    root = nnunet_env / f"src{year}"
    gli = year == "2023"
    suffixes = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"} if gli else \
        {s: s for s in ("flair", "t1", "t1ce", "t2", "seg")}
    for i in range(1, 6):
        folder, pattern = make(i)
        (root / folder).mkdir(parents=True)
        for s, new in suffixes.items():
            src = synthetic_src / f"BraTS20_Training_{i:03d}" / f"BraTS20_Training_{i:03d}_{s}.nii.gz"
            dst = root / folder / pattern.format(s=new)
            if s == "seg" and gli:
                img = sitk.ReadImage(str(src))
                a = sitk.GetArrayFromImage(img)
                a[a == 4] = 3
                o = sitk.GetImageFromArray(a)
                o.CopyInformation(img)
                sitk.WriteImage(o, str(dst))
            else:
                shutil.copy(src, dst)
    assert main(["convert-brats", "--src", str(root), "-d", "905", "-np", "1"]) == 0
    ds = _dataset(nnunet_env, 905)
    assert ds.name == f"Dataset905_BraTS{year}"
    rec = read_availability(ds)
    case = rec["split"]["train"][0]
    seg = _arr(ds / "labelsTr" / f"{case}.nii.gz")
    assert set(np.unique(seg)) == {0, 1, 2, 3}


def test_brats2020_case_355_label_name_and_really_missing_files(nnunet_env, synthetic_src):
    root = nnunet_env / "src"
    shutil.copytree(synthetic_src, root)
    case355 = root / "BraTS20_Training_355"
    (root / "BraTS20_Training_001").rename(case355)
    for f in case355.iterdir():
        f.rename(case355 / f.name.replace("_001_", "_355_"))
    seg = case355 / "BraTS20_Training_355_seg.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(seg)), str(case355 / "W39_1998.09.19_Segm.nii"))  # uncompressed, as in 2020
    seg.unlink()
    (root / "BraTS20_Training_002" / "BraTS20_Training_002_t1ce.nii.gz").unlink()  # really missing
    convert_brats(root, dataset_id=906, num_processes=1)
    ds = _dataset(nnunet_env, 906)
    rec = read_availability(ds)
    assert rec["missing_in_source"] == {"BraTS20_Training_002": ["T1c"]}
    code = {**rec["cases"], **rec["test_cases"]}["BraTS20_Training_002"]
    assert code == [1, 1, 0, 1]
    folder = "imagesTr" if "BraTS20_Training_002" in rec["cases"] else "imagesTs"
    assert not _arr(ds / folder / "BraTS20_Training_002_0002.nii.gz").any()
    assert "BraTS20_Training_355" in rec["cases"] or "BraTS20_Training_355" in rec["test_cases"]


def test_fm_simulation_rule():
    present = {f"c{i}": (1, 1, 1, 1) for i in range(20)}
    present["c0"] = (1, 0, 1, 1)  # really missing: never counted as full-modality
    sim = simulate_full_modality_ratio(present, 0.1, seed=3, modalities=BRATS_MODALITIES)
    assert len(sim["full_modality_cases"]) == 2 and "c0" not in sim["full_modality_cases"]
    assert sim == simulate_full_modality_ratio(present, 0.1, seed=3, modalities=BRATS_MODALITIES)
    for case, dropped in sim["dropped"].items():
        assert 1 <= len(dropped) <= 3
    assert len(simulate_full_modality_ratio(present, 0.01, 0, BRATS_MODALITIES)["full_modality_cases"]) == 1
    assert simulate_full_modality_ratio(present, 0.0, 0, BRATS_MODALITIES)["full_modality_cases"] == []
    with pytest.raises(AllStageError):
        simulate_full_modality_ratio(present, 1.5, 0, BRATS_MODALITIES)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_fm_ratio_counts_training_subjects_of_the_brats2018_split(seed):
    split = load_split("brats2018")
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (199, 29, 57)
    present = {c: (1, 1, 1, 1) for c in split["train"] + split["val"]}
    parts = {"train": split["train"], "val": split["val"]}
    for ratio, n_train, n_val in ((0.01, 2, 1), (0.1, 20, 3)):
        sim = simulate_missing_modalities(present, parts, ratio, seed, BRATS_MODALITIES)
        assert len(sim["full_modality_train_cases"]) == n_train and set(sim["full_modality_train_cases"]) <= set(parts["train"])
        assert len(sim["full_modality_val_cases"]) == n_val and set(sim["full_modality_val_cases"]) <= set(parts["val"])
        assert set(sim["dropped"]) == set(present) - set(sim["full_modality_cases"])
    # the training draw does not depend on the validation set
    alone = simulate_missing_modalities(present, {"train": split["train"], "val": []}, 0.1, seed, BRATS_MODALITIES)
    assert alone["full_modality_train_cases"] == simulate_missing_modalities(
        present, parts, 0.1, seed, BRATS_MODALITIES)["full_modality_train_cases"]


def _break(root: Path, how: str):
    case = root / "BraTS20_Training_003"
    f = lambda s: case / f"BraTS20_Training_003_{s}.nii.gz"
    if how == "missing label":
        f("seg").unlink()
    elif how == "grid mismatch":
        img = sitk.ReadImage(str(f("t2")))
        img.SetSpacing((1.0, 1.0, 2.0))
        sitk.WriteImage(img, str(f("t2")))
    elif how == "size mismatch":
        img = sitk.ReadImage(str(f("t1")))
        sitk.WriteImage(img[:-2, :, :], str(f("t1")))
    elif how == "bad label":
        img = sitk.ReadImage(str(f("seg")))
        a = sitk.GetArrayFromImage(img)
        a[0, 0, 0] = 7
        o = sitk.GetImageFromArray(a)
        o.CopyInformation(img)
        sitk.WriteImage(o, str(f("seg")))
    elif how == "empty case":
        for s in ("flair", "t1", "t1ce", "t2"):
            f(s).unlink()
    elif how == "all-zero file":
        img = sitk.ReadImage(str(f("t2")))
        o = sitk.Image(img.GetSize(), img.GetPixelID())
        o.CopyInformation(img)
        sitk.WriteImage(o, str(f("t2")))
    elif how == "2d image":
        img = sitk.ReadImage(str(f("t2")))
        sitk.WriteImage(img[:, :, 0], str(f("t2")))
    elif how == "unreadable":
        f("t1").write_bytes(b"not an image")
    elif how == "truncated file":  # SimpleITK alone would read the missing part as zeros
        truncate(f("t1"))
    elif how == "NaN voxels":  # SimpleITK alone would read them as 0
        add_nan(f("flair"))
    elif how == "duplicate id":
        (root / "HGG").mkdir()
        shutil.copytree(case, root / "HGG" / case.name)
        return "duplicate case id"
    return "BraTS20_Training_003"


BAD_INPUTS = ["missing label", "grid mismatch", "size mismatch", "bad label", "empty case", "all-zero file",
              "2d image", "unreadable", "truncated file", "NaN voxels", "duplicate id"]


def truncate(path: Path) -> None:
    """Cut a NIfTI file to a third, as an interrupted copy does."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])


def add_nan(path: Path, value=np.nan) -> None:
    img = sitk.ReadImage(str(path))
    a = sitk.GetArrayFromImage(img).astype(np.float32)
    a[a.shape[0] // 2, 5, 5] = value
    o = sitk.GetImageFromArray(a)
    o.CopyInformation(img)
    sitk.WriteImage(o, str(path))


def test_sitk_alone_reads_these_files_silently(tmp_path, synthetic_src):
    """Why the checks exist: SimpleITK reads both broken files without an error."""
    src = synthetic_src / "BraTS20_Training_001"
    cut, nan = tmp_path / "cut.nii.gz", tmp_path / "nan.nii.gz"
    shutil.copy(src / "BraTS20_Training_001_t1.nii.gz", cut)
    shutil.copy(src / "BraTS20_Training_001_flair.nii.gz", nan)
    truncate(cut)
    add_nan(nan)
    assert sitk.ReadImage(str(cut)).GetSize() == sitk.ReadImage(str(src / "BraTS20_Training_001_t1.nii.gz")).GetSize()
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(nan)))).all()
    from nnunet_allstage.image_io import verify_image_file
    for path, words in ((cut, "truncated"), (nan, "NaN")):
        with pytest.raises(AllStageError, match=words):
            verify_image_file(path, "x")


@pytest.mark.parametrize("how", BAD_INPUTS)
def test_bad_inputs_give_one_line_errors_and_leave_nothing(nnunet_env, synthetic_src, capsys, how):
    root = nnunet_env / "src"
    shutil.copytree(synthetic_src, root)
    expected = _break(root, how)
    # the broken case is a training case in this split, so a missing label is an error
    split = nnunet_env / "split.json"
    ids = sorted(p.name for p in root.iterdir() if p.name.startswith("BraTS20"))
    split.write_text(json.dumps({"train": ids[:6], "val": ids[6:7], "test": ids[7:]}))
    rc = main(["convert-brats", "--src", str(root), "-d", "907", "--split-file", str(split), "-np", "2"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("nnunet-allstage: error")]
    assert len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert _nothing_left(nnunet_env)
    if how not in ("duplicate id",):
        assert main(["convert-brats", "--src", str(root), "-d", "907", "--split-file", str(split), "--skip-bad",
                     "-np", "1"]) == 0
        rec = read_availability(_dataset(nnunet_env, 907))
        assert list(rec["skipped"]) == ["BraTS20_Training_003"]
        assert "BraTS20_Training_003" not in rec["cases"]


def test_existing_dataset_needs_force_and_interrupt_leaves_nothing(nnunet_env, synthetic_src, capsys, monkeypatch):
    assert main(["convert-brats", "--src", str(synthetic_src), "-d", "908", "-np", "1"]) == 0
    before = sorted(p.name for p in (nnunet_env / "nnUNet_raw").iterdir())
    assert main(["convert-brats", "--src", str(synthetic_src), "-d", "908", "--name", "Other", "-np", "1"]) == 2
    assert "--force" in capsys.readouterr().err
    assert sorted(p.name for p in (nnunet_env / "nnUNet_raw").iterdir()) == before

    import nnunet_allstage.conversion.dataset as conv
    calls = {"n": 0}
    original = conv.write_case

    def failing_write(job):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(job)
    monkeypatch.setattr(conv, "write_case", failing_write)
    with pytest.raises(KeyboardInterrupt):
        convert_brats(synthetic_src, dataset_id=909, num_processes=1)
    assert sorted(p.name for p in (nnunet_env / "nnUNet_raw").iterdir()) == before  # no half dataset
    monkeypatch.setattr(conv, "write_case", original)
    assert main(["convert-brats", "--src", str(synthetic_src), "-d", "908", "--name", "Other", "--force",
                 "-np", "1"]) == 0
    assert [p.name for p in (nnunet_env / "nnUNet_raw").iterdir()] == ["Dataset908_Other"]


def test_split_errors(nnunet_env, synthetic_src, capsys):
    split = nnunet_env / "split.json"
    split.write_text(json.dumps({"train": ["BraTS20_Training_001"], "val": [], "test": []}))
    assert main(["convert-brats", "--src", str(synthetic_src), "-d", "910", "--split-file", str(split)]) == 2
    assert "not in the split" in capsys.readouterr().err
    assert main(["convert-brats", "--src", str(synthetic_src), "-d", "910", "--split-file", "nope.json"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["convert-brats", "--src", str(nnunet_env / "absent"), "-d", "910"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["convert-brats", "--src", str(synthetic_src), "-d", "910", "--year", "2023"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert _nothing_left(nnunet_env)


def test_shipped_splits():
    s18, s20 = load_split("brats2018"), load_split("brats2020")
    assert (len(s18["train"]), len(s18["val"]), len(s18["test"])) == (199, 29, 57)
    assert (len(s20["train"]), len(s20["val"]), len(s20["test"])) == (219, 50, 100)


def test_convert_folder_three_modalities(nnunet_env, synthetic_src):
    """A user's own prostate-like study with T2, ADC and DWI: any M >= 2 with the user's channel names."""
    root = nnunet_env / "study"
    for i in range(1, 7):
        case = root / f"patient{i}"
        case.mkdir(parents=True)
        src = synthetic_src / f"BraTS20_Training_{i:03d}"
        for old, new in (("t2", "T2w"), ("flair", "adc"), ("t1ce", "dwi")):
            shutil.copy(src / f"BraTS20_Training_{i:03d}_{old}.nii.gz", case / f"{new}.nii.gz")
        img = sitk.ReadImage(str(src / f"BraTS20_Training_{i:03d}_seg.nii.gz"))
        o = sitk.GetImageFromArray((sitk.GetArrayFromImage(img) > 0).astype(np.uint8))
        o.CopyInformation(img)
        sitk.WriteImage(o, str(case / "lesion.nii.gz"))
    (root / "patient2" / "dwi.nii.gz").unlink()
    rc = main(["convert-folder", "--src", str(root), "-d", "911", "--name", "Prostate", "--modality", "T2=T2w.nii.gz",
               "--modality", "ADC=adc.nii.gz", "--modality", "DWI=dwi.nii.gz", "--label", "lesion.nii.gz",
               "--labels", "background=0", "--labels", "lesion=1", "--fm-ratio", "0.5", "-np", "1"])
    assert rc == 0
    ds = _dataset(nnunet_env, 911)
    dj = json.loads((ds / "dataset.json").read_text())
    assert dj["channel_names"] == {"0": "T2", "1": "ADC", "2": "DWI"}
    rec = read_availability(ds)
    assert rec["modalities"] == ["T2", "ADC", "DWI"]
    assert rec["missing_in_source"] == {"patient2": ["DWI"]}
    assert all(len(v) == 3 for v in rec["cases"].values())


def test_nan_values_are_refused(nnunet_env, synthetic_src, capsys):
    """ITK's NIfTI reader already turns NaN into 0, so NaNs reach us through other formats (here .mha)."""
    root = nnunet_env / "mha"
    for i in range(1, 5):
        case = root / f"c{i}"
        case.mkdir(parents=True)
        for s in ("flair", "t2", "seg"):
            img = sitk.ReadImage(str(synthetic_src / f"BraTS20_Training_{i:03d}" / f"BraTS20_Training_{i:03d}_{s}.nii.gz"))
            if s == "t2" and i == 2:
                a = sitk.GetArrayFromImage(img).astype(np.float32)
                a[5, 5, 5] = np.nan
                o = sitk.GetImageFromArray(a)
                o.CopyInformation(img)
                img = o
            sitk.WriteImage(img, str(case / f"{s}.mha"))
    args = ["convert-folder", "--src", str(root), "-d", "912", "--name", "Mha", "--modality", "FLAIR=flair.mha",
            "--modality", "T2=t2.mha", "--label", "seg.mha", "--labels", "background=0", "--labels", "a=1",
            "--labels", "b=2", "--labels", "c=4", "-np", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "case c2" in err and "NaN" in err
    assert _nothing_left(nnunet_env)


@pytest.mark.parametrize("how", ["truncated", "inf"])
def test_convert_folder_refuses_truncated_and_infinite_nifti(nnunet_env, synthetic_src, capsys, how):
    root = nnunet_env / "own"
    for i in range(1, 5):
        case = root / f"c{i}"
        case.mkdir(parents=True)
        for s in ("flair", "t2", "seg"):
            shutil.copy(synthetic_src / f"BraTS20_Training_{i:03d}" / f"BraTS20_Training_{i:03d}_{s}.nii.gz",
                        case / f"{s}.nii.gz")
    truncate(root / "c3" / "t2.nii.gz") if how == "truncated" else add_nan(root / "c3" / "t2.nii.gz", np.inf)
    args = ["convert-folder", "--src", str(root), "-d", "913", "--name", "Own", "--modality", "FLAIR=flair.nii.gz",
            "--modality", "T2=t2.nii.gz", "--label", "seg.nii.gz", "--labels", "background=0", "--labels", "a=1",
            "--labels", "b=2", "--labels", "c=4", "-np", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if l.startswith("nnunet-allstage: error"))
    assert "case c3" in line and "t2.nii.gz" in line and ("truncated" in line if how == "truncated" else "infinite" in line)
    assert _nothing_left(nnunet_env)


@pytest.mark.parametrize("how", ["truncated", "nan"])
def test_evaluate_refuses_truncated_or_nan_test_files_before_predicting(tmp_path, synthetic_src, how):
    from nnunet_allstage.evaluation import find_test_cases
    images, labels = tmp_path / "imagesTs", tmp_path / "labelsTs"
    images.mkdir()
    labels.mkdir()
    for i in (1, 2):
        src = synthetic_src / f"BraTS20_Training_{i:03d}"
        for ch, s in enumerate(("flair", "t1", "t1ce", "t2")):
            shutil.copy(src / f"BraTS20_Training_{i:03d}_{s}.nii.gz", images / f"case{i}_{ch:04d}.nii.gz")
        shutil.copy(src / f"BraTS20_Training_{i:03d}_seg.nii.gz", labels / f"case{i}.nii.gz")
    assert len(find_test_cases(images, labels, ".nii.gz", 4)) == 2
    truncate(images / "case2_0001.nii.gz") if how == "truncated" else add_nan(images / "case2_0003.nii.gz")
    with pytest.raises(AllStageError, match="case case2: .*" + ("truncated" if how == "truncated" else "NaN")):
        find_test_cases(images, labels, ".nii.gz", 4)


# ---------------------------------------------------------------- scans without labels
def _split_labelled_and_unlabelled(root: Path, synthetic_src: Path, n_unlabelled: int = 3) -> tuple[Path, Path]:
    labelled, unlabelled = root / "labelled", root / "unlabelled"
    cases = sorted(p for p in synthetic_src.iterdir() if p.is_dir())
    for i, case in enumerate(cases):
        target = (unlabelled if i >= len(cases) - n_unlabelled else labelled) / case.name
        shutil.copytree(case, target)
        if i >= len(cases) - n_unlabelled:
            next(target.glob("*_seg.nii.gz")).unlink()
    return labelled, unlabelled


def test_unlabelled_folder_joins_training_without_labels(nnunet_env, synthetic_src):
    labelled, unlabelled = _split_labelled_and_unlabelled(nnunet_env, synthetic_src)
    (unlabelled / "BraTS20_Training_007" / "BraTS20_Training_007_t2.nii.gz").unlink()  # really missing there too
    assert main(["convert-brats", "--src", str(labelled), "--unlabelled-src", str(unlabelled), "-d", "931",
                 "--fm-ratio", "0.25", "--seed", "0", "-np", "1"]) == 0
    ds = _dataset(nnunet_env, 931)
    rec = read_availability(ds)
    names = ["BraTS20_Training_006", "BraTS20_Training_007", "BraTS20_Training_008"]
    assert rec["unlabelled"] == names and rec["labels"]["unlabelled_source"] == str(unlabelled.resolve())
    assert set(names) <= set(rec["split"]["train"]) and not set(names) & set(rec["split"]["val"] + rec["split"]["test"])
    assert rec["missing_in_source"]["BraTS20_Training_007"] == ["T2"] and rec["cases"]["BraTS20_Training_007"][3] == 0
    # 5 labelled cases split 3:1:1, the 3 unlabelled ones in training: round(0.25 * 6) = 2 keep every sequence
    assert sum(all(rec["cases"][c]) for c in rec["split"]["train"]) == 2
    dataset_json = json.loads((ds / "dataset.json").read_text())
    assert dataset_json["labels"]["ignore"] == 4 and dataset_json["numTraining"] == 7
    for case in names:
        assert set(np.unique(_arr(ds / "labelsTr" / f"{case}.nii.gz"))) == {4}
    for case in rec["split"]["train"][:2]:
        assert set(np.unique(_arr(ds / "labelsTr" / f"{case}.nii.gz"))) <= {0, 1, 2, 3}


def test_labelled_fraction_keeps_round_f_n_labels_and_records_them(nnunet_env, synthetic_src):
    convert_brats(synthetic_src, dataset_id=932, split={"name": "x", "train": [f"BraTS20_Training_{i:03d}" for i in
                                                                                range(1, 7)],
                                                        "val": ["BraTS20_Training_007"], "test": ["BraTS20_Training_008"]},
                  labelled_fraction=0.5, seed=3, num_processes=1)
    rec = read_availability(_dataset(nnunet_env, 932))
    simulation = rec["labels"]["simulation"]
    assert len(simulation["kept"]) == 3 and len(simulation["dropped"]) == 3  # round(0.5 * 6)
    assert rec["unlabelled"] == simulation["dropped"] and not set(simulation["kept"]) & set(simulation["dropped"])
    assert "BraTS20_Training_007" not in rec["unlabelled"] and "BraTS20_Training_008" not in rec["unlabelled"]
    # at least one kept however small the fraction; the same seed keeps the same cases
    convert_brats(synthetic_src, dataset_id=933, labelled_fraction=0.01, seed=3, num_processes=1)
    assert len(read_availability(_dataset(nnunet_env, 933))["labels"]["simulation"]["kept"]) == 1


@pytest.mark.parametrize("how", ["label in unlabelled folder", "same case in both", "fraction above one",
                                 "fraction zero", "all unlabelled", "unlabelled case listed as val"])
def test_bad_unlabelled_inputs_are_one_line_errors(nnunet_env, synthetic_src, capsys, how):
    labelled, unlabelled = _split_labelled_and_unlabelled(nnunet_env, synthetic_src)
    args = ["convert-brats", "--src", str(labelled), "--unlabelled-src", str(unlabelled), "-d", "934", "-np", "1"]
    expected = {"label in unlabelled folder": "case BraTS20_Training_006 of --unlabelled-src has a label file",
                "same case in both": "case BraTS20_Training_001 is in --src",
                "fraction above one": "--labelled-fraction must lie in (0, 1]",
                "fraction zero": "--labelled-fraction must lie in (0, 1]",
                "all unlabelled": "every training case would be unlabelled",
                "unlabelled case listed as val": "has no label file, but the split puts it in 'val'"}[how]
    if how == "label in unlabelled folder":
        shutil.copy(synthetic_src / "BraTS20_Training_006" / "BraTS20_Training_006_seg.nii.gz",
                    unlabelled / "BraTS20_Training_006")
    elif how == "same case in both":
        shutil.copytree(labelled / "BraTS20_Training_001", unlabelled / "BraTS20_Training_001")
        next((unlabelled / "BraTS20_Training_001").glob("*_seg.nii.gz")).unlink()
    elif how == "fraction above one":
        args += ["--labelled-fraction", "1.5"]
    elif how == "fraction zero":
        args += ["--labelled-fraction", "0"]
    elif how == "all unlabelled":
        for case in labelled.iterdir():
            next(case.glob("*_seg.nii.gz")).unlink()
        args = ["convert-folder", "--src", str(labelled), "-d", "934", "--name", "X", "--modality", "FLAIR=*_flair.nii.gz",
                "--modality", "T2=*_t2.nii.gz", "--label", "*_seg.nii.gz", "--allow-unlabelled", "-np", "1"]
    else:
        split = nnunet_env / "split.json"
        for case in labelled.iterdir():
            if case.name == "BraTS20_Training_005":
                next(case.glob("*_seg.nii.gz")).unlink()
        split.write_text(json.dumps({"train": [f"BraTS20_Training_00{i}" for i in range(1, 4)],
                                     "val": ["BraTS20_Training_005"], "test": ["BraTS20_Training_004"]}))
        args = ["convert-folder", "--src", str(labelled), "-d", "934", "--name", "X", "--modality", "FLAIR=*_flair.nii.gz",
                "--modality", "T2=*_t2.nii.gz", "--label", "*_seg.nii.gz", "--allow-unlabelled", "--split-file",
                str(split), "-np", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert _nothing_left(nnunet_env)
    if how == "label in unlabelled folder":  # ... unless the labels are to be kept
        assert main(args + ["--keep-labels"]) == 0
        rec = read_availability(_dataset(nnunet_env, 934))
        assert "BraTS20_Training_006" in rec["split"]["train"] and rec["unlabelled"] == ["BraTS20_Training_007",
                                                                                        "BraTS20_Training_008"]


def test_convert_real_sample_with_half_of_the_labels(nnunet_env, brats_sample):
    """The study's scarce-label setting on the real sample: 4 of the 8 training cases keep their labels."""
    cases = [c for c in discover_brats_cases(brats_sample, brats_layout("2018"))]
    held_back = {"Brats18_2013_3_1", "Brats18_CBICA_AME_1", "Brats18_TCIA01_425_1", "Brats18_TCIA10_637_1"}
    train = sorted(c.case_id for c in cases if c.case_id not in held_back)
    source = nnunet_env / "train_source"
    source.mkdir()
    for c in cases:
        if c.case_id in train:
            (source / c.case_id).symlink_to(c.folder, target_is_directory=True)
    convert_brats(source, dataset_id=935, split={"name": "study", "train": train, "val": [], "test": []},
                  fm_ratio=0.25, labelled_fraction=0.5, seed=0, num_processes=2)
    ds = _dataset(nnunet_env, 935)
    rec = read_availability(ds)
    assert len(rec["unlabelled"]) == 4 and len(rec["labels"]["simulation"]["kept"]) == 4
    for case in rec["unlabelled"]:
        assert set(np.unique(_arr(ds / "labelsTr" / f"{case}.nii.gz"))) == {4}
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
    verify_dataset_integrity(str(ds), num_processes=2)  # nnU-Net accepts the ignore label
