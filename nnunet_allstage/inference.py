"""What every command that runs a trained model shares: `predict`, `validate`, `evaluate` and `synthesize`.

* loading a trained model folder into nnU-Net's predictor, its checkpoint read with `checkpoints.safe_load`;
* preprocessing a case once, and predicting one input combination of it by zeroing channels in memory (nnU-Net
  keeps an all-zero channel exactly zero and crops to the union of all channels, so this is the segmentation of
  zero-filled files; see tests);
* the cases of an input folder (nnU-Net or BraTS naming, missing files allowed) and their materialised files;
* the sidecar files beside a model or an input folder, read so that a corrupt one costs what it records, never
  the command's own output.

Each command's module imports this one and none of the others.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from nnunet_allstage.checkpoints import is_random_clip, provenance, safe_load, weights_digest
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.image_io import geometry, read_image, same_grid
from nnunet_allstage.modalities import BRATS_MODALITIES, code_label
from nnunet_allstage.networks import network_code

TILE_STEP_SIZE = 0.5  # nnU-Net's default sliding-window overlap, as RFNet/mmFormer/M3AE evaluate
SYNTHESIZED_RECORD = "synthesized.json"  # written by `synthesize` beside the sequences it made
EXPECTED_FILE = "expected_accuracy.json"  # written by `validate` beside the checkpoint
FAR_BELOW = 0.10  # mean Dice this far below the all-sequences value earns a warning in predict


# ------------------------------------------------------------------------------------------------ sidecar files
def read_json_file(path: Path, what: str) -> dict:
    """A JSON file the command cannot work without: its content, or a one-line error naming it."""
    if not path.is_file():
        raise AllStageError(f"{path} not found ({what})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AllStageError(f"{path} is not valid JSON ({e}); it holds {what}: restore or regenerate it") from None


def read_sidecar(path: Path, lost: str, log: Callable[[str], None] = print) -> dict | None:
    """A JSON file that adds to a command's output: its content, None when absent, and None with a warning that
    names it and says what is lost (``lost``) when it cannot be read."""
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
        if not isinstance(content, dict):
            raise ValueError("not a JSON object")
        return content
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        log(f"WARNING: {path} cannot be read ({e}); {lost}")
        return None


# ------------------------------------------------------------------------------------------------ models
@dataclass
class Model:
    name: str  # shown in tables
    folder: Path  # nnU-Net's Trainer__Plans__Config folder
    predictor: object
    provenance: dict = field(default_factory=dict)  # checkpoints.provenance: stage, options, code table
    checkpoint: Path | None = None  # the file the weights came from
    weights_digest: str | None = None  # checkpoints.weights_digest of the weights loaded

    @property
    def random_clip(self) -> bool:
        return is_random_clip(self.provenance)

    def warning(self) -> str | None:
        if self.random_clip:
            return (f"WARNING: {self.name} uses RANDOM-WEIGHT CLIP embeddings (tests and demo only): its code table "
                    f"carries no language knowledge; do not report it as the method")
        return None


def make_predictor(network: torch.nn.Module, plans_manager, configuration_manager, weights: dict, dataset_json: dict,
                   trainer_name: str, mirror_axes, device: torch.device, tta: bool):
    """nnU-Net's predictor around ``network`` (it loads ``weights`` into it before every prediction)."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=TILE_STEP_SIZE, use_mirroring=tta, device=device, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, [weights], dataset_json,
                                    trainer_name, mirror_axes)
    return predictor


def model_files(folder: Path, fold, checkpoint_name: str) -> tuple[dict, dict, object]:
    """(checkpoint, dataset.json, PlansManager) of one fold of a trained model folder."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    checkpoint = safe_load(folder / f"fold_{fold}" / checkpoint_name)
    dataset_json = read_json_file(folder / "dataset.json", "the model's dataset description")
    plans_manager = PlansManager(read_json_file(folder / "plans.json", "the model's nnU-Net plans"))
    return checkpoint, dataset_json, plans_manager


def load_predictor(folder: Path, fold, checkpoint_name: str, device: torch.device, tta: bool):
    """nnU-Net's predictor for one fold of a trained model folder (what
    nnUNetPredictor.initialize_from_trained_model_folder does, minus the unsafe load). Returns (predictor,
    provenance, digest of the weights)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    checkpoint, dataset_json, plans_manager = model_files(folder, fold, checkpoint_name)
    configuration_manager = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    trainer_name = checkpoint["trainer_name"]
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    if trainer_class is None:
        raise AllStageError(f"trainer {trainer_name} of {folder} not found; set nnUNet_extTrainer (eval \"$("
                            f"nnunet-allstage env)\")")
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager, determine_num_input_channels(plans_manager, configuration_manager,
                                                                           dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    predictor = make_predictor(network, plans_manager, configuration_manager, checkpoint["network_weights"],
                               dataset_json, trainer_name, checkpoint.get("inference_allowed_mirroring_axes"), device,
                               tta)
    return predictor, provenance(checkpoint), weights_digest(checkpoint["network_weights"])


def load_model(folder: Path, fold, checkpoint: str, device: torch.device, tta: bool, name: str) -> Model:
    ckpt = folder / f"fold_{fold}" / checkpoint
    if not ckpt.is_file():
        trainer = folder.name.split("__")[0]
        raise AllStageError(f"{ckpt} not found: train {trainer} first (nnunet-allstage train, or nnUNetv2_train "
                            f"... -tr {trainer})")
    from nnunet_allstage.environment import trainer_shim_dir
    os.environ["nnUNet_extTrainer"] = str(trainer_shim_dir())  # nnU-Net finds our trainer classes through it
    predictor, record, digest = load_predictor(folder, fold, checkpoint, device, tta)
    model = Model(name, folder, predictor, record, ckpt, digest)
    if model.warning():
        print(model.warning())
    return model


# ------------------------------------------------------------------------------------------------ one case
def preprocess_case(predictor, files: Sequence[Path]) -> tuple[torch.Tensor, dict]:
    """The case read and preprocessed as nnU-Net's predictor does (crop, resample, normalise), once."""
    rw = predictor.plans_manager.image_reader_writer_class()
    image, props = rw.read_images([str(f) for f in files])
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    data, _, props = preprocessor.run_case_npy(image, None, props, predictor.plans_manager,
                                               predictor.configuration_manager, predictor.dataset_json)
    return torch.from_numpy(data).contiguous(), props


def zero_channels(data: torch.Tensor, code: Sequence[int]) -> torch.Tensor:
    """Preprocessed ``data`` (C, ...) with the channels ``code`` marks missing set to zero."""
    return data * torch.tensor(code, dtype=data.dtype).view(-1, *([1] * (data.ndim - 1)))


def predict_combination(model: Model, data: torch.Tensor, props: dict, code: Sequence[int]) -> np.ndarray:
    """Segmentation (original geometry, dataset label values) of preprocessed ``data`` with ``code`` zeroed in."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    p = model.predictor
    code_t = torch.tensor([code], dtype=torch.float32)
    with network_code(p.network, code_t.to(p.device)), torch.no_grad():
        logits = p.predict_logits_from_preprocessed_data(zero_channels(data, code)).cpu()
    return convert_predicted_logits_to_segmentation_with_correct_shape(logits, p.plans_manager,
                                                                       p.configuration_manager, p.label_manager, props)


# ------------------------------------------------------------------------------------------------ input folders
@dataclass
class InputCase:
    case_id: str
    files: list[Path | None]  # one per channel, None = missing


def _nnunet_named_cases(folder: Path, file_ending: str, num_channels: int) -> list[InputCase]:
    pattern = re.compile(rf"^(.+)_(\d{{4}}){re.escape(file_ending)}$")
    by_case: dict[str, list[Path | None]] = {}
    for p in sorted(folder.iterdir()):
        m = pattern.match(p.name)
        if m and p.is_file():
            channel = int(m.group(2))
            if channel >= num_channels:
                raise AllStageError(f"{p.name}: channel {channel} but the model has {num_channels} channels")
            by_case.setdefault(m.group(1), [None] * num_channels)[channel] = p
    return [InputCase(c, files) for c, files in by_case.items()]


def find_input_cases(folder: Path, file_ending: str, modality_names: list[str]) -> tuple[list[InputCase], str | None]:
    """Cases of the input folder and, for BraTS naming, the detected year."""
    from nnunet_allstage.conversion.sources import brats_layout, detect_brats_year, discover_brats_cases
    if not folder.is_dir():
        raise AllStageError(f"-i {folder} is not a folder")
    cases = _nnunet_named_cases(folder, file_ending, len(modality_names))
    if cases:
        return cases, None
    if list(modality_names) != list(BRATS_MODALITIES):
        raise AllStageError(f"no files named CASE_XXXX{file_ending} in {folder}")
    year = detect_brats_year(folder)
    brats = discover_brats_cases(folder, brats_layout(year))
    return [InputCase(c.case_id, [c.modality_files[m] for m in BRATS_MODALITIES]) for c in brats], year


def materialise_case(case: InputCase, tmp: Path, file_ending: str) -> tuple[list[Path], tuple[int, ...]]:
    """Zero placeholders for missing channels; checks that present ones share a grid. Returns the channel files
    and the code: a channel whose file is absent or all zero (the plugin's convention, as for stock
    nnUNetv2_predict) is missing."""
    reference, code, files = None, [], []
    for f in case.files:
        nonzero = False
        if f is not None:
            img = read_image(f, case.case_id)
            if reference is None:
                reference = (f, img)
            else:
                problem = same_grid(geometry(reference[1]), geometry(img))
                if problem:
                    raise AllStageError(f"case {case.case_id}: {f.name} is not on the grid of {reference[0].name}: "
                                        f"{problem}")
            nonzero = bool(sitk.GetArrayViewFromImage(img).any())
        code.append(int(nonzero))
    if reference is None:
        raise AllStageError(f"case {case.case_id}: no modality file")
    if not any(code):
        raise AllStageError(f"case {case.case_id}: every modality image is all zero")
    for channel, f in enumerate(case.files):
        if f is None:
            zero = sitk.Image(reference[1].GetSize(), reference[1].GetPixelID())
            zero.CopyInformation(reference[1])
            f = tmp / f"{case.case_id}_{channel:04d}{file_ending}"
            sitk.WriteImage(zero, str(f))
        files.append(f)
    return files, tuple(code)


def synthetic_sequences(input_folder: Path, log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """{case: sequences made by `nnunet-allstage synthesize`}, from the input folder's synthesized.json."""
    record = read_sidecar(input_folder / SYNTHESIZED_RECORD, "which sequences are synthetic is unknown: every "
                          "input file is used, and listed, as real", log)
    if record is None:
        return {}
    try:
        cases = {case: sorted(entry["synthetic"]) for case, entry in record["cases"].items() if entry["synthetic"]}
    except (KeyError, TypeError, AttributeError):
        log(f"WARNING: {input_folder / SYNTHESIZED_RECORD} lacks the per-case record synthesize writes; which "
            f"sequences are synthetic is unknown: every input file is used, and listed, as real")
        return {}
    if cases:
        log(f"WARNING: {len(cases)} case(s) of {input_folder} hold SYNTHETIC sequences ({SYNTHESIZED_RECORD}); they "
            f"are used as if real and listed per case in predictions.json")
    return cases


# ------------------------------------------------------------------------------------------------ expected accuracy
def load_expected(model: Model, log: Callable[[str], None] = print) -> tuple[dict | None, str | None]:
    """The expected-accuracy record measured on this model's very weights, or (None, why not)."""
    if model.checkpoint is None:
        return None, "no checkpoint file"
    path = model.checkpoint.parent / EXPECTED_FILE
    if not path.is_file():
        return None, f"no {EXPECTED_FILE} beside {model.checkpoint} (run nnunet-allstage validate)"
    record = read_sidecar(path, "the expected accuracy per combination is not quoted", log)
    if record is None:
        return None, f"{path} cannot be read (re-run nnunet-allstage validate)"
    if record.get("weights_sha256") != model.weights_digest or record.get("checkpoint") != model.checkpoint.name:
        return None, f"{path} was measured on other weights (re-run nnunet-allstage validate)"
    if not isinstance(record.get("combinations"), dict) or not isinstance(record.get("modalities"), list):
        log(f"WARNING: {path} lacks the per-combination record validate writes; the expected accuracy per "
            f"combination is not quoted")
        return None, f"{path} is incomplete (re-run nnunet-allstage validate)"
    return record, None


def expectation_for(record: dict, combination: str) -> tuple[dict | None, str | None]:
    """What to expect of a prediction from ``combination``, and a warning when it is far below all sequences."""
    entry = record["combinations"].get(combination)
    if not entry or not entry["n_validation_cases"]:
        return None, f"no validation case measured {combination}: accuracy unknown"
    full = record["combinations"][code_label((1,) * len(record["modalities"]), record["modalities"])]
    expected = {k: entry[k] for k in ("dice", "hd95", "mean_dice", "n_validation_cases")}
    if full.get("n_validation_cases") and entry["mean_dice"] < full["mean_dice"] - FAR_BELOW:
        return expected, (f"from {combination} the expected mean Dice is {100 * entry['mean_dice']:.1f} "
                          f"({entry['n_validation_cases']} validation case(s)), against "
                          f"{100 * full['mean_dice']:.1f} with all sequences")
    return expected, None
