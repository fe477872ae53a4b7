"""Does co-distillation have anything to teach? Stage 4's teacher, scored as a model of its own.

Stage 4 distils from the frozen stage-2 model run in full-modality mode (code all ones) on the input whose
missing channels the recovering module g fills (Eq. 4); L_data refines g through the same teacher (Eq. 5). The
student can only gain from that teacher where it segments a case with missing sequences better than the student
already does, and the student learns what the stage-2 model learns plus the KD term. `probe_models` puts the
teacher of a trained stage-4 run into each situation, as models that `evaluate` scores on the same test cases and
input combinations as any other:

* the stage-2 model as deployed: missing channels zero, the case's own code (stage 2's row of a study);
* full-modality mode on zeros: code all ones, missing channels zero (what Table 5 (b) distils from);
* full-modality mode on g's fill-ins: stage 4's KD target and L_data's input.

If the third is no better than the first on the incomplete combinations, the KD target holds nothing the
student does not already get from its own task loss, and stage 4 cannot be expected to beat stage 2.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from nnunet_allstage.checkpoints import safe_load
from nnunet_allstage.errors import AllStageError
from nnunet_allstage.masking import fill_missing
from nnunet_allstage.networks import derive_code


class TeacherInFullMode(nn.Module):
    """The frozen teacher with code all ones; with ``recovery``, the missing channels are filled by g first.
    Which channels are available comes from ``code_override`` (set by `networks.network_code` around a
    prediction, as for a hyper-network), else from the input's all-zero channels."""

    def __init__(self, teacher: nn.Module, recovery: nn.Module | None = None):
        super().__init__()
        self.teacher, self.recovery = teacher, recovery
        self.code_override: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        available = self.code_override if self.code_override is not None else derive_code(x)
        available = available.to(x.device)
        if self.recovery is not None:
            x = fill_missing(x, available, self.recovery(x))
        return self.teacher(x, torch.ones_like(available))


def teacher_folder(stage4_folder: Path, checkpoint: dict) -> Path:
    """The stage-2 model folder a stage-4 run took its teacher from (same dataset, plans and configuration)."""
    from nnunet_allstage.training import schedule_suffix, trainer_class
    trainer = trainer_class(checkpoint["trainer_name"])
    explicit = checkpoint.get("allstage", {}).get("options", {}).get("stage2_checkpoint")
    if explicit:
        return Path(explicit).parents[1]
    _, plans, configuration = stage4_folder.name.split("__")
    name = trainer.teacher_trainer + schedule_suffix(trainer.schedule_epochs)
    return stage4_folder.parent / f"{name}__{plans}__{configuration}"


def probe_models(stage4_folder: Path, fold, device: torch.device, checkpoint_name: str = "checkpoint_final.pth"):
    """[stage-2 model as deployed, teacher in full mode on zeros, teacher in full mode on g's fill-ins] of a trained
    stage-4 model folder, as `evaluation.Model`s (TTA off)."""
    from nnunet_allstage.inference import Model, load_model, make_predictor
    from nnunet_allstage.networks import build_mae_network
    from nnunet_allstage.training import trainer_class

    path = Path(stage4_folder) / f"fold_{fold}" / checkpoint_name
    if not path.is_file():
        raise AllStageError(f"{path} not found: train AllStageTrainer first")
    checkpoint = safe_load(path)
    trainer = trainer_class(checkpoint["trainer_name"])
    recovery_weights = checkpoint.get("allstage", {}).get("recovery_weights")
    if recovery_weights is None or not getattr(trainer, "teacher_is_hyper", False):
        raise AllStageError(f"{path} ({checkpoint['trainer_name']}) has no recovering module or no hyper-teacher: "
                            f"the probe needs a co-distillation run with both (e.g. AllStageTrainer)")
    deployed = load_model(teacher_folder(Path(stage4_folder), checkpoint), fold, checkpoint_name, device, False,
                          "stage 2 as deployed (own code, missing channels zero)")
    p = deployed.predictor
    recovery = build_mae_network(p.plans_manager, p.configuration_manager, p.network.num_modalities)
    recovery.load_state_dict(recovery_weights)
    models = [deployed]
    for name, g in (("teacher in full mode on zeros", None), ("teacher in full mode on g's fill-ins (KD target)",
                                                              recovery)):
        network = TeacherInFullMode(p.network, g).eval()
        predictor = make_predictor(network, p.plans_manager, p.configuration_manager, network.state_dict(),
                                   p.dataset_json, checkpoint["trainer_name"], None, device, tta=False)
        models.append(Model(name, deployed.folder, predictor, deployed.provenance, path))
    return models


def probe_summary(results, reference: str) -> list[dict]:
    """Per model: mean Dice (over regions, cases and combinations) on the incomplete combinations and with every
    sequence, and the per-case paired difference to ``reference`` on the incomplete ones (mean, standard error over
    cases, cases where it is higher). ``results`` has evaluate's results.csv columns."""
    import numpy as np
    complete = results["available"].map(lambda marks: "○" not in marks)
    per_case = results[~complete].groupby(["model", "case"])["dice"].mean()
    out = []
    for model in dict.fromkeys(results["model"]):
        row = {"model": model, "incomplete": float(per_case[model].mean()),
               "complete": float(results[complete & (results["model"] == model)]["dice"].mean())}
        if model != reference:
            diff = (per_case[model] - per_case[reference]).to_numpy()
            row.update(delta=float(diff.mean()), se=float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1
                       else float("nan"), wins=int((diff > 0).sum()), cases=len(diff))
        out.append(row)
    return out


def format_probe_summary(rows: list[dict]) -> str:
    n = next((r["cases"] for r in rows if "cases" in r), 0)
    lines = ["| model | Dice, incomplete inputs (14 combinations) | Dice, all sequences | paired Δ incomplete vs "
             f"row 1 (± s.e., n={n}) | wins |", "|---|---|---|---|---|"]
    for r in rows:
        delta = f"{100 * r['delta']:+.1f} ± {100 * r['se']:.1f}" if "delta" in r else "–"
        wins = f"{r['wins']}/{r['cases']}" if "wins" in r else "–"
        lines.append(f"| {r['model']} | {100 * r['incomplete']:.1f} | {100 * r['complete']:.1f} | {delta} | {wins} |")
    return "\n".join(lines)
