import pytest

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.modalities import (BRATS_MODALITIES, code_label, code_markers,
                                        code_to_index, combinations, index_to_code, make_availability_record,
                                        modality_names_from_dataset_json, prompt, prompts_in_bit_order,
                                        read_availability, subset_to_code, write_availability)


def test_combinations_order_and_count():
    combos = combinations(4)
    assert len(combos) == 15 and len(set(combos)) == 15
    assert combos[:4] == [(1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]
    assert combos[-1] == (1, 1, 1, 1)
    assert [sum(c) for c in combos] == sorted(sum(c) for c in combos)
    assert len(combinations(3)) == 7 and len(combinations(2)) == 3


def test_code_index_roundtrip():
    for m in (2, 3, 4, 5):
        indices = sorted(code_to_index(c) for c in combinations(m))
        assert indices == list(range(2 ** m - 1))
        for i in range(2 ** m - 1):
            assert code_to_index(index_to_code(i, m)) == i
    with pytest.raises(ValueError):
        code_to_index((0, 0, 0, 0))


def test_subsets_and_labels():
    code = subset_to_code(["T2", "FLAIR", "T1c"], BRATS_MODALITIES)
    assert code == (1, 0, 1, 1)
    assert code_label(code, BRATS_MODALITIES) == "FLAIR+T1c+T2"
    assert code_markers(code) == "●○●●"
    with pytest.raises(AllStageError):
        subset_to_code(["DWI"], BRATS_MODALITIES)


def test_prompt_text():
    assert prompt((1, 0, 1, 1), BRATS_MODALITIES) == "The input MRI modalities are FLAIR, T1c and T2."
    assert prompt((0, 1, 0, 0), BRATS_MODALITIES) == "The input MRI modalities are T1."
    assert prompt((1, 1), ("T2", "ADC")) == "The input MRI modalities are T2 and ADC."
    table = prompts_in_bit_order(("T2", "ADC", "DWI"))
    assert len(table) == 7 and table[0] == "The input MRI modalities are T2."


def test_dataset_json_names():
    assert modality_names_from_dataset_json({"channel_names": {"1": "T1", "0": "FLAIR"}}) == ["FLAIR", "T1"]
    with pytest.raises(AllStageError):
        modality_names_from_dataset_json({"channel_names": {"0": "CT"}})


def test_availability_roundtrip_and_validation(tmp_path):
    rec = make_availability_record(("A", "B", "C"), {"x": [1, 0, 1], "y": [1, 1, 1]}, test_cases={"t": [1, 1, 1]})
    write_availability(rec, tmp_path)
    back = read_availability(tmp_path)
    assert back["cases"] == {"x": [1, 0, 1], "y": [1, 1, 1]}
    with pytest.raises(AllStageError, match="no available modality"):
        make_availability_record(("A", "B"), {"x": [0, 0]})
    with pytest.raises(AllStageError, match="not a 0/1 vector"):
        make_availability_record(("A", "B"), {"x": [1, 0, 1]})
    with pytest.raises(AllStageError, match="not found"):
        read_availability(tmp_path / "nothing")
