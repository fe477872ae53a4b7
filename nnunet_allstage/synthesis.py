"""`nnunet-allstage synthesize`: the missing sequences themselves, made by the stage-4 recovering module g.

The final model of `AllStageTrainer` carries g (the MAE refined by co-distillation) in its checkpoint. For each
case, the available sequences are preprocessed as for segmentation (crop, resample, z-score per channel), the
missing channels are zeros, and g runs in nnU-Net's sliding window; its output is resampled back to the case's grid
and orientation.

Intensities. nnU-Net's z-score normalisation discards each image's own scale, and a sequence the case lacks has no
scale to recover. A synthetic image is therefore written as ``mean_m + std_m * z`` inside the brain (the voxels
where any available sequence is non-zero) and 0 outside, where ``mean_m``/``std_m`` are the medians, over up to
20 training cases that have modality m, of that image's mean and standard deviation inside its non-zero region:
the training data's typical scale. Without the training images (nnUNet_raw) the file holds the z-scores and the
record says so. Either way the synthetic file is marked as synthetic in ``synthesized.json``.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import SimpleITK as sitk
import torch
from tqdm import tqdm

from nnunet_allstage.environment import nnunet_folder
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.inference import (SYNTHESIZED_RECORD, find_input_cases, make_predictor, materialise_case,
                                       model_files, preprocess_case, read_sidecar, zero_channels)
from nnunet_allstage.metrics import psnr
from nnunet_allstage.modalities import (code_label, combinations, modality_names_from_dataset_json,
                                        read_availability)
from nnunet_allstage.networks import build_mae_network

REFERENCE_FILE = "synthesis_intensity_reference.json"
REFERENCE_CASES = 20


@dataclass
class Synthesizer:
    predictor: object  # nnU-Net's predictor around g
    names: list[str]
    checkpoint: Path
    reference: dict | None  # {modality: {"mean", "std"}} or None (z-scores)


def load_synthesizer(folder: Path, fold, checkpoint_name: str, device: torch.device, log=print) -> Synthesizer:
    """g of a trained stage-4 model folder, in nnU-Net's predictor (sliding window, preprocessing)."""
    path = folder / f"fold_{fold}" / checkpoint_name
    if not path.is_file():
        raise AllStageError(f"{path} not found: train AllStageTrainer first (nnunet-allstage train)")
    checkpoint, dataset_json, plans_manager = model_files(folder, fold, checkpoint_name)
    weights = checkpoint.get("allstage", {}).get("recovery_weights")
    if weights is None:
        raise AllStageError(f"{path} ({checkpoint.get('trainer_name')}) holds no recovering module: synthesize needs "
                            f"the final model of AllStageTrainer (stage 4), e.g. -tr AllStageTrainer")
    names = modality_names_from_dataset_json(dataset_json)
    configuration_manager = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    network = build_mae_network(plans_manager, configuration_manager, len(names))
    network.load_state_dict(weights)
    predictor = make_predictor(network, plans_manager, configuration_manager, weights, dataset_json,
                               checkpoint["trainer_name"], None, device, tta=False)
    # nnU-Net's sliding window sizes its output by the label manager's head count: g outputs one channel per modality
    predictor.label_manager = SimpleNamespace(num_segmentation_heads=len(names))
    reference = intensity_reference(folder, plans_manager.dataset_name, names, dataset_json["file_ending"], log)
    return Synthesizer(predictor, names, path, reference)


def intensity_reference(model_folder: Path, dataset_name: str, names: list[str], ending: str,
                        log=print) -> dict | None:
    """The training data's typical scale per modality (see the module docstring); cached in the model folder."""
    cache = model_folder / REFERENCE_FILE
    cached = read_sidecar(cache, "it is measured again from the training images", log)
    if cached is not None and set(cached) == set(names):
        return cached
    try:
        raw = nnunet_folder("nnUNet_raw") / dataset_name
        availability = read_availability(raw)["cases"] if (raw / "dataset.json").is_file() else None
    except AllStageError as e:
        log(f"WARNING: no intensity reference ({e}); synthetic images hold z-scores")
        return None
    if availability is None:
        return None
    reference = {}
    for channel, name in enumerate(names):
        means, stds = [], []
        for case in [c for c, a in sorted(availability.items()) if a[channel]][:REFERENCE_CASES]:
            values = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "imagesTr" / f"{case}_{channel:04d}{ending}")))
            inside = values[values != 0].astype(np.float64)
            if inside.size:
                means.append(inside.mean())
                stds.append(inside.std())
        if not means:
            return None
        reference[name] = {"mean": float(np.median(means)), "std": float(np.median(stds)), "cases": len(means)}
    cache.write_text(json.dumps(reference, indent=1))
    return reference


def synthesize_arrays(synth: Synthesizer, case: tuple, code: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(g's output in z-scores, one channel per modality, on the grid of the input files; the brain mask), from
    the channels ``code`` keeps (the others are zeroed, as for a case that lacks them). ``case`` is what
    `read_case` returns, so a case is read and preprocessed once for all its combinations."""
    data, props, images = case
    p = synth.predictor
    data = zero_channels(data, code)
    with torch.no_grad():
        z = p.predict_logits_from_preprocessed_data(data).float()
    pm, cm = p.plans_manager, p.configuration_manager
    # as nnU-Net's convert_predicted_logits_to_segmentation_with_correct_shape resamples, without the argmax
    spacing = [props["spacing"][i] for i in pm.transpose_forward]
    shape = props["shape_after_cropping_and_before_resampling"]
    current = cm.spacing if len(cm.spacing) == len(shape) else [spacing[0], *cm.spacing]
    z = cm.resampling_fn_probabilities(z, shape, current, spacing)
    z = np.asarray(z.cpu() if isinstance(z, torch.Tensor) else z, dtype=np.float32)
    full = np.zeros((z.shape[0], *props["shape_before_cropping"]), dtype=np.float32)
    bbox = props["bbox_used_for_cropping"]
    full[(slice(None), *[slice(lo, hi) for lo, hi in bbox])] = z
    full = full.transpose([0] + [i + 1 for i in pm.transpose_backward])
    brain = np.any([images[c] != 0 for c, keep in enumerate(code) if keep], axis=0)
    return full, brain


def read_case(synth: Synthesizer, files: list[Path]) -> tuple:
    """The case preprocessed as for segmentation, and its images as arrays (for the brain mask)."""
    data, props = preprocess_case(synth.predictor, files)
    return data, props, [sitk.GetArrayFromImage(sitk.ReadImage(str(f))) for f in files]


def to_intensity(z: np.ndarray, brain: np.ndarray, reference: dict | None, name: str) -> np.ndarray:
    scaled = z if reference is None else reference[name]["mean"] + reference[name]["std"] * z
    return np.where(brain, scaled, 0).astype(np.float32)


def synthesize_folder(synth: Synthesizer, input_folder: Path, output_folder: Path, with_inputs: bool = False,
                      log=print) -> dict:
    """Writes, for every case of ``input_folder`` (nnU-Net or BraTS naming), the sequences it lacks in nnU-Net
    naming (CASE_XXXX.nii.gz, on the case's grid) and ``synthesized.json``; ``with_inputs`` copies the real ones
    too, so ``output_folder`` holds complete cases. Returns the record."""
    ending = synth.predictor.dataset_json["file_ending"]
    cases, _ = find_input_cases(input_folder, ending, synth.names)
    output_folder.mkdir(parents=True, exist_ok=True)
    record = {"model": str(synth.checkpoint), "intensity_mapping": _mapping_text(synth.reference),
              "intensity_reference": synth.reference, "cases": {}, "failed": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in tqdm(cases, desc="synthesizing", unit="case", disable=None):
            try:
                files, code = materialise_case(case, Path(tmp), ending)
                missing = [c for c, keep in enumerate(code) if not keep]
                entry = {"real": [synth.names[c] for c in range(len(code)) if code[c]], "synthetic": {}}
                if missing:
                    z, brain = synthesize_arrays(synth, read_case(synth, files), code)
                    grid = sitk.ReadImage(str(files[code.index(1)]))
                    for c in missing:
                        image = sitk.GetImageFromArray(to_intensity(z[c], brain, synth.reference, synth.names[c]))
                        image.CopyInformation(grid)
                        target = output_folder / f"{case.case_id}_{c:04d}{ending}"
                        sitk.WriteImage(image, str(target), useCompression=True)
                        entry["synthetic"][synth.names[c]] = target.name
                if with_inputs:
                    for c, f in enumerate(case.files):
                        if code[c]:
                            shutil.copyfile(f, output_folder / f"{case.case_id}_{c:04d}{ending}")
                record["cases"][case.case_id] = entry
                log(f"{case.case_id}: " + (f"synthesized {', '.join(entry['synthetic'])} from {code_label(code, synth.names)}"
                                           if missing else "has every sequence, nothing to synthesize"))
            except AllStageError as e:
                log(f"error: {e}")
                record["failed"][case.case_id] = str(e)
    (output_folder / SYNTHESIZED_RECORD).write_text(json.dumps(record, indent=1))
    n = sum(bool(e["synthetic"]) for e in record["cases"].values())
    log(f"{n} case(s) with synthetic sequences written to {output_folder} (listed in {SYNTHESIZED_RECORD})"
        + (f"; failed: {', '.join(record['failed'])}" if record["failed"] else ""))
    if cases and len(record["failed"]) == len(cases):
        raise AllStageError("no case could be synthesized")
    return record


def _mapping_text(reference: dict | None) -> str:
    if reference is None:
        return "z-scores (the training images were not found under nnUNet_raw to take a typical scale from)"
    return ("mean_m + std_m * z inside the brain, 0 outside; mean_m, std_m = medians over the training cases "
            "of each image's mean and standard deviation inside its non-zero region (see intensity_reference)")


# ------------------------------------------------------------------------------------------- --evaluate (BraSyn)
def similarity(real: np.ndarray, synthetic: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM inside the brain mask, as the BraTS synthesis task (BraSyn) measures them: both images
    scaled by the real image's 0.5 and 99.5 percentiles inside the mask to [0, 1] and clipped."""
    from skimage.metrics import structural_similarity
    lo, hi = np.percentile(real[brain], [0.5, 99.5])
    scale = max(hi - lo, 1e-8)
    a = np.clip((real - lo) / scale, 0, 1) * brain
    b = np.clip((synthetic - lo) / scale, 0, 1) * brain
    mse = float(np.mean((a[brain] - b[brain]) ** 2))
    _, ssim_map = structural_similarity(a, b, data_range=1.0, full=True)
    return float(psnr(mse, 1.0)), float(ssim_map[brain].mean())


def evaluate_synthesis(synth: Synthesizer, input_folder: Path, output_folder: Path, log=print) -> dict:
    """On cases with every sequence: each combination that lacks some sequence is simulated by dropping them, g
    fills them in, and PSNR/SSIM inside the brain compare each synthetic sequence with the real one. Writes
    synthesis_metrics.csv, synthesis_table.md and synthesis_examples.png."""
    import pandas as pd
    ending = synth.predictor.dataset_json["file_ending"]
    cases, _ = find_input_cases(input_folder, ending, synth.names)
    complete = [c for c in cases if all(f is not None for f in c.files)]
    if not complete:
        raise AllStageError(f"--evaluate needs cases with every sequence ({', '.join(synth.names)}) in {input_folder}")
    codes = [c for c in combinations(len(synth.names)) if not all(c)]
    rows, examples = [], {}
    bar = tqdm(total=len(complete) * len(codes), desc="synthesis vs real", unit="combination", disable=None)
    for case in complete:
        prepared = read_case(synth, list(case.files))
        real = [image.astype(np.float32) for image in prepared[2]]
        for code in codes:
            z, brain = synthesize_arrays(synth, prepared, code)
            for c in (c for c, keep in enumerate(code) if not keep):
                synthetic = to_intensity(z[c], brain, synth.reference, synth.names[c])
                mask = brain & (real[c] != 0)
                db, ssim = similarity(real[c], synthetic, mask)
                rows.append({"case": case.case_id, "combination": code_label(code, synth.names),
                             "modality": synth.names[c], "psnr": db, "ssim": ssim})
                if sum(code) == len(code) - 1 and synth.names[c] not in examples:
                    examples[synth.names[c]] = (real[c], synthetic, mask)
            bar.update()
    bar.close()
    output_folder.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows)
    table.to_csv(output_folder / "synthesis_metrics.csv", index=False)
    summary = table.groupby(["modality", "combination"])[["psnr", "ssim"]].mean()
    lines = [f"Synthesis vs real over {len(complete)} case(s) (PSNR dB / SSIM inside the brain)", "",
             "| Synthesized | from | PSNR | SSIM |", "|---|---|---|---|"]
    for (modality, combination), r in summary.iterrows():
        lines.append(f"| {modality} | {combination} | {r['psnr']:.2f} | {r['ssim']:.3f} |")
    per_modality = table.groupby("modality")[["psnr", "ssim"]].mean()
    lines += ["", "| Synthesized | mean PSNR | mean SSIM |", "|---|---|---|"]
    lines += [f"| {m} | {r['psnr']:.2f} | {r['ssim']:.3f} |" for m, r in per_modality.iterrows()]
    (output_folder / "synthesis_table.md").write_text("\n".join(lines) + "\n")
    _example_figure({n: examples[n] for n in synth.names if n in examples}, output_folder / "synthesis_examples.png",
                    complete[0].case_id)
    log("\n".join(lines))
    log(f"written to {output_folder} (synthesis_metrics.csv, synthesis_table.md, synthesis_examples.png)")
    return {"rows": rows, "per_modality": per_modality.to_dict("index")}


def _example_figure(examples: dict, path: Path, case_id: str) -> None:
    """Per modality: real | synthetic (from all the other sequences) | absolute difference, middle axial slice."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.5 * len(examples)), squeeze=False)
    for row, (name, (real, synthetic, mask)) in enumerate(examples.items()):
        z = int(np.argmax(mask.sum(axis=(1, 2)))) if mask.any() else real.shape[0] // 2
        vmax = float(np.percentile(real[mask], 99.5)) if mask.any() else None
        panels = [(real[z], "real"), (synthetic[z], "synthetic"), (np.abs(real[z] - synthetic[z]), "|difference|")]
        for col, (image, title) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray" if col < 2 else "magma", vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle(f"{case_id}: each sequence synthesized from all the others", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
