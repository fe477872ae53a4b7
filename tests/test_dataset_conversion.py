"""Each script of dataset_conversion/ run through its main path on the synthetic layout: the split, FM ratio and
label mapping it spells out reach the dataset, and --to-portal gives back the source's own label values."""
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_allstage.modalities import read_availability

SCRIPTS = Path(__file__).resolve().parents[1] / "dataset_conversion"
LEGACY_SUFFIXES = ("flair", "t1", "t1ce", "t2")
GLI_SUFFIX = {"flair": "t2f", "t1": "t1n", "t1ce": "t1c", "t2": "t2w", "seg": "seg"}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cases(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.is_dir())


def renamed_copy(src: Path, target: Path, new_ids: list[str], gli: bool = False) -> dict[str, Path]:
    """The synthetic cases under new case ids (and in 2023 naming); returns {case id: source label file}."""
    labels = {}
    for folder, case_id in zip(_cases(src), new_ids):
        out = target / case_id
        out.mkdir(parents=True)
        for path in folder.iterdir():
            suffix = path.name[len(folder.name) + 1:].split(".")[0]
            if gli:
                image = sitk.ReadImage(str(path))
                if suffix == "seg":  # BraTS 2023 labels enhancing tumour 3, not 4
                    array = sitk.GetArrayFromImage(image)
                    array[array == 4] = 3
                    relabelled = sitk.GetImageFromArray(array)
                    relabelled.CopyInformation(image)
                    image = relabelled
                sitk.WriteImage(image, str(out / f"{case_id}-{GLI_SUFFIX[suffix]}.nii.gz"))
            else:
                shutil.copy(path, out / f"{case_id}_{suffix}.nii.gz")
        labels[case_id] = next(out.glob("*seg.nii.gz"))
    return labels


def shipped_ids(split: str, counts=(4, 1, 1)) -> list[str]:
    data = json.loads((SCRIPTS.parent / "nnunet_allstage" / "splits" / f"{split}.json").read_text())
    return [c for part, n in zip(("train", "val", "test"), counts) for c in data[part][:n]]


@pytest.mark.parametrize("script, year, split", [
    ("Dataset501_BraTS2018", "2018", "brats2018"), ("Dataset502_BraTS2019", "2019", None),
    ("Dataset503_BraTS2020", "2020", "brats2020"), ("Dataset504_BraTS2021", "2021", None),
    ("Dataset505_BraTS2023_GLI", "2023", None)])
def test_brats_script_converts_and_maps_back(script, year, split, synthetic_src, nnunet_env, tmp_path):
    module = load_script(script)
    if split:
        ids = shipped_ids(split)
    elif year == "2023":
        ids = [f"BraTS-GLI-{i:05d}-000" for i in range(6)]
    else:
        ids = [f"{'BraTS19_CBICA_A' if year == '2019' else 'BraTS2021_'}{i:05d}" for i in range(6)]
    source_labels = renamed_copy(synthetic_src, tmp_path / "src", ids, gli=year == "2023")
    assert module.main([str(tmp_path / "src"), "-d", str(module.DATASET_ID), "-np", "1"]) == 0

    dataset = nnunet_env / "nnUNet_raw" / f"Dataset{module.DATASET_ID}_BraTS{year}_FM1"
    record = read_availability(dataset)
    assert record["simulation"]["fm_ratio"] == module.FM_RATIO == 0.01
    train = record["split"]["train"]
    assert len(record["simulation"]["full_modality_train_cases"]) == 1  # round(0.01 * N) but at least one
    if split:
        assert record["split"]["name"] == f"shipped:{split}"
        assert (train, record["split"]["val"], record["split"]["test"]) == (sorted(ids[:4]), ids[4:5], ids[5:])
    else:
        assert record["split"]["name"].startswith("random(")

    # nnU-Net's region values in labelsTr; --to-portal writes the year's own values back, voxel for voxel
    assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "labelsTr" / f"{train[0]}.nii.gz"))))) \
        <= {0, 1, 2, 3}
    portal = tmp_path / "portal"
    assert module.main(["--to-portal", str(dataset / "labelsTr"), str(portal)]) == 0
    for case_id in train:
        back = sitk.GetArrayFromImage(sitk.ReadImage(str(portal / f"{case_id}.nii.gz")))
        source = sitk.GetArrayFromImage(sitk.ReadImage(str(source_labels[case_id])))
        assert np.array_equal(back, source), case_id
    assert set(np.unique(back)) <= set(module.LABEL_MAP)


def test_own_folder_script_keeps_really_missing_sequences(synthetic_src, nnunet_env, tmp_path, capsys):
    module = load_script("Dataset599_OwnFolder")
    src = tmp_path / "src"
    ids = [f"patient{i}" for i in range(6)]
    renamed_copy(synthetic_src, src, ids)
    (src / "patient2" / "patient2_t1ce.nii.gz").unlink()  # this patient never had a contrast scan
    assert module.main([str(src), "-np", "1"]) == 0
    record = read_availability(nnunet_env / "nnUNet_raw" / "Dataset599_MyGlioma")
    assert record["simulation"] is None and record["missing_in_source"] == {"patient2": ["T1c"]}
    every = {**record["cases"], **record["test_cases"]}
    assert every["patient2"] == [1, 1, 0, 1] and all(sum(v) == 4 for c, v in every.items() if c != "patient2")
    # a second run without --force refuses to overwrite, with the reason
    assert module.main([str(src), "-np", "1"]) == 2
    assert "--force" in capsys.readouterr().err
