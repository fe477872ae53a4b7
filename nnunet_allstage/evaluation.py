"""`nnunet-allstage evaluate`: every input combination, every case, one or several models side by side.

Each test case (all modalities present) is read and preprocessed once per plans/configuration; each
combination is simulated by zeroing channels of the preprocessed array in memory (`inference.predict_combination`),
which gives the same segmentation as zero-filled files. The modality code is handed to hyper-networks explicitly.
This module is the paper's Table 1: the metrics, the table, the CSV, the heatmaps.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from nnunet_allstage.errors import AllStageError
from nnunet_allstage.image_io import verify_image_file
from nnunet_allstage.inference import Model, predict_combination, preprocess_case
from nnunet_allstage.lesionwise import METRICS as LESION_METRICS
from nnunet_allstage.lesionwise import lesionwise_metrics, load_evaluator
from nnunet_allstage.metrics import region_metrics, regions_from_dataset_json
from nnunet_allstage.modalities import (code_label, code_markers, combinations, modality_names_from_dataset_json,
                                        subset_to_code)


def parse_combinations(spec: str | None, names: Sequence[str]) -> list[tuple[int, ...]]:
    """'all' / None, or a comma-separated list such as 'FLAIR,T1c+T2,FLAIR+T1+T1c+T2'."""
    if not spec or spec == "all":
        return combinations(len(names))
    codes = []
    for item in spec.split(","):
        code = subset_to_code([s.strip() for s in item.split("+") if s.strip()], names)
        if not any(code):
            raise AllStageError(f"--combinations: empty combination in {spec!r}")
        codes.append(code)
    return codes


def find_test_cases(images: Path, labels: Path, file_ending: str, num_channels: int) -> list[tuple[str, list[Path], Path]]:
    if not images.is_dir():
        raise AllStageError(f"test images folder {images} not found")
    if not labels.is_dir():
        raise AllStageError(f"test labels folder {labels} not found")
    suffix = f"_0000{file_ending}"
    cases = sorted(p.name[: -len(suffix)] for p in images.glob(f"*{suffix}"))
    if not cases:
        raise AllStageError(f"no test cases (*{suffix}) in {images}")
    out = []
    for case in cases:
        files = [images / f"{case}_{c:04d}{file_ending}" for c in range(num_channels)]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise AllStageError(f"test case {case}: {missing[0]} is missing in {images}")
        label = labels / f"{case}{file_ending}"
        if not label.is_file():
            raise AllStageError(f"test case {case}: no label {label.name} in {labels}")
        for f in files + [label]:
            verify_image_file(f, case)  # before any prediction: a truncated file would read as zeros
        out.append((case, files, label))
    return out


METRIC_STYLE = {  # title, scale, higher is better
    "dice": ("Dice (%)", 100, True), "hd95": ("HD95 (mm)", 1, False),
    "lesion_dice": ("Lesion-wise Dice (%, BraTS package)", 100, True),
    "lesion_hd95": ("Lesion-wise HD95 (mm, BraTS package)", 1, False),
    "lesion_f1": ("Lesion detection F1 (%, BraTS package)", 100, True)}
METRIC_SETS = {"paper": ("dice", "hd95"), "lesionwise": LESION_METRICS, "both": ("dice", "hd95", *LESION_METRICS)}


def evaluate(models: list[Model], cases, codes: list[tuple[int, ...]], out_dir: Path, save_segmentations: bool = False,
             log=print, metrics: str = "paper") -> dict:
    """Every model on every case and combination. ``metrics``: the paper's case-wise Dice/HD95 ('paper'), the
    BraTS challenges' lesion-wise ones through the official package ('lesionwise'), or 'both'."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    dataset_json = models[0].predictor.dataset_json
    names = modality_names_from_dataset_json(dataset_json)
    regions = regions_from_dataset_json(dataset_json)
    region_names = [r for r, _ in regions]
    lesion_evaluator = load_evaluator(region_names) if metrics in ("lesionwise", "both") else None
    label_rw = models[0].predictor.plans_manager.image_reader_writer_class()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    bar = tqdm(total=len(cases) * len(codes) * len(models), desc="evaluating", unit="prediction", disable=None)
    for case, files, label in cases:
        reference, ref_props = label_rw.read_seg(str(label))
        reference = reference[0]
        spacing = ref_props["spacing"]
        preprocessed = {}
        for model in models:
            key = (model.predictor.plans_manager.plans_name, model.folder.name.split("__")[-1])
            if key not in preprocessed:
                preprocessed[key] = preprocess_case(model.predictor, files)
            data, props = preprocessed[key]
            for code in codes:
                seg = predict_combination(model, data, props, code)
                if save_segmentations:
                    seg_dir = out_dir / "segmentations" / model.name / code_label(code, names)
                    seg_dir.mkdir(parents=True, exist_ok=True)
                    SimpleITKIO().write_seg(seg, str(seg_dir / label.name), ref_props)
                lesions = lesionwise_metrics(lesion_evaluator, seg, reference, spacing, region_names) \
                    if lesion_evaluator is not None else {}
                for region, (d, h) in region_metrics(seg, reference, spacing, regions).items():
                    rows.append({"model": model.name, "case": case, "combination": code_label(code, names),
                                 "available": code_markers(code), "region": region, "dice": d, "hd95": h,
                                 **lesions.get(region, {})})
                bar.update()
    bar.close()
    summary = summarise(rows, [m.name for m in models], codes, names, region_names, METRIC_SETS[metrics])
    summary["provenance"] = {m.name: m.provenance for m in models}
    summary["warnings"] = [m.warning() for m in models if m.warning()]
    write_outputs(rows, summary, out_dir, names)
    log(markdown_table(summary, names))
    log(f"evaluation written to {out_dir} (results.csv, summary.json, table.md, "
        + ", ".join(f"{m}_heatmap.png" for m in summary["metrics"]) + ")")
    return summary


def summarise(rows: list[dict], model_names: list[str], codes, names, region_names,
              metrics: tuple[str, ...] = ("dice", "hd95")) -> dict:
    """Per model, region and combination (in ``codes``' order) the mean of each metric over the cases, its mean
    over the combinations, and each model's average over the regions (NaN values, e.g. lesion-wise metrics of a
    region empty in both images, are left out of the means)."""
    import pandas as pd
    labels = [code_label(c, names) for c in codes]
    means = pd.DataFrame(rows).groupby(["model", "region", "combination"])[list(metrics)].mean()
    summary = {"modalities": list(names), "combinations": labels, "markers": [code_markers(c) for c in codes],
               "regions": region_names, "metrics": list(metrics), "models": {}}
    for model in model_names:
        per = {}
        for region in region_names:
            table = means.loc[(model, region)].reindex(labels)
            per[region] = {key: value for m in metrics
                           for key, value in ((m, table[m].tolist()), (f"mean_{m}", float(table[m].mean())))}
        per["average"] = {f"mean_{m}": float(np.nanmean([per[r][f"mean_{m}"] for r in region_names]))
                          for m in metrics}
        summary["models"][model] = per
    summary["num_cases"] = len({r["case"] for r in rows})
    return summary


def markdown_table(summary: dict, names: Sequence[str]) -> str:
    """The paper's Table 1: combinations as columns (one ●/○ row per modality), a mean column, regions x models
    as rows; one block per metric (Dice in %, then HD95 in mm, then the lesion-wise ones when measured)."""
    n = len(summary["combinations"])
    lines = [f"**{w}**\n" for w in summary.get("warnings", [])]
    for metric in summary.get("metrics", ["dice", "hd95"]):
        title, scale, _ = METRIC_STYLE[metric]
        lines.append(f"**{title}** over {summary['num_cases']} case(s)\n")
        lines.append("| Region | Method | " + " | ".join(str(i + 1) for i in range(n)) + " | Mean |")
        lines.append("|---|---|" + "---|" * (n + 1))
        for m, name in enumerate(names):
            lines.append(f"| | {name} | " + " | ".join(mk[m] for mk in summary["markers"]) + " | |")
        for region in summary["regions"]:
            for model, per in summary["models"].items():
                values = [f"{v * scale:.2f}" for v in per[region][metric]]
                mean = f"{per[region][f'mean_{metric}'] * scale:.2f}"
                lines.append(f"| {region} | {model} | " + " | ".join(values) + f" | **{mean}** |")
        lines.append("")
    return "\n".join(lines)


def write_outputs(rows: list[dict], summary: dict, out_dir: Path, names) -> None:
    import pandas as pd
    columns = ["model", "case", "combination", "available", "region", "dice", "hd95"]
    columns += [m for m in summary.get("metrics", []) if m not in columns]
    pd.DataFrame(rows, columns=columns).to_csv(out_dir / "results.csv", index=False)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "table.md").write_text(markdown_table(summary, names))
    for metric in summary.get("metrics", ["dice", "hd95"]):
        write_heatmap(summary, metric, out_dir / f"{metric}_heatmap.png")


def write_heatmap(summary: dict, metric: str, path: Path) -> None:
    """Models x regions as rows, the combinations and their mean as columns, each cell annotated."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns
    unit, scale, higher_is_better = METRIC_STYLE[metric]
    table = pd.DataFrame({f"{region} · {model}": [v * scale for v in per[region][metric]]
                          + [per[region][f"mean_{metric}"] * scale]
                          for model, per in summary["models"].items() for region in summary["regions"]},
                         index=summary["combinations"] + ["mean"]).T
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * table.shape[1], 1.2 + 0.45 * table.shape[0]))
    sns.heatmap(table, ax=ax, annot=True, fmt=".0f" if scale == 100 else ".1f", annot_kws={"fontsize": 6},
                cmap="viridis" if higher_is_better else "viridis_r", vmin=0 if scale == 100 else None,
                vmax=100 if scale == 100 else None, cbar_kws={"label": unit})
    ax.tick_params(labelsize=8)
    ax.set_xticklabels(ax.get_xticklabels(), rotation=60, ha="right")
    ax.set_title(f"{unit} per input combination ({summary['num_cases']} case(s))", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
