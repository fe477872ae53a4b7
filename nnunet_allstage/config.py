"""Options of the method (the decisions of documentation/method.md), changeable without new trainer classes.

nnU-Net's trainer constructor takes no extra arguments, so options come, in increasing priority, from the
defaults below, from ``allstage_config.json`` in the dataset's nnUNet_preprocessed folder, and from
environment variables ``NNUNET_ALLSTAGE_<NAME>`` (upper case), e.g. ``NNUNET_ALLSTAGE_MASK_RATIO=0.75``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from nnunet_allstage.errors import AllStageError

CONFIG_FILE = "allstage_config.json"
ENV_PREFIX = "NNUNET_ALLSTAGE_"
# the paper's optimiser (Sec. 4.2: Adam, lr 3e-4, weight decay 5e-4, cosine decay) for pre-training and segmentation
PAPER_LR = 3e-4
PAPER_WEIGHT_DECAY = 5e-4
# the short-schedule trainer variants (``AllStageTrainer_1epoch``, ...): --schedule name and epochs
SCHEDULES = {"1epoch": 1, "5epochs": 5}


def schedule_suffix(epochs: int | None) -> str:
    """The class-name suffix of the variant with this many epochs ('' for the full schedule)."""
    if epochs is None:
        return ""
    return "_" + next(name for name, n in SCHEDULES.items() if n == epochs)


@dataclass
class AllStageConfig:
    # modality dropout: 'uniform' = one non-empty subset of the available modalities, uniformly; 'none' = off
    modality_dropout: str = "uniform"
    # MDrop's probability that a sample keeps its whole available set ('uniform' = 1/(2^k - 1), the same as every
    # other subset); the rest stays uniform over the proper non-empty subsets
    full_set_probability: str = "uniform"
    # optimiser of the segmentation trainers (stage 2, stage 4, the ablations): 'nnunet' = SGD 1e-2, momentum 0.99,
    # poly decay; 'paper' = Adam 3e-4, weight decay 5e-4, cosine decay (the paper's Sec. 4.2); the measurement that
    # decided the default: documentation/options.md
    segmentation_optimizer: str = "paper"
    # stage 4: the recovering module g's learning rate relative to the student's (its own parameter group, its own
    # gradient clipping)
    recovery_lr_scale: float = 1.0
    # stage 4: what g sees: 'available' = the available channels as they are; 'masked' = patch-masked as in stage 1
    recovery_input: str = "available"
    # stage 4: the student's start: 'stage3' = the stage-3 MAE's encoder/decoder, hyper head fresh (the method's);
    # 'stage2' = the whole stage-2 model (the teacher's weights)
    student_init: str = "stage3"
    # stage 1 masking (M3AE): cubic patches of this many voxels per side, this fraction of kept-modality patches
    mask_patch_size: int = 16
    mask_ratio: float = 0.875
    mae_lr: float = PAPER_LR
    mae_weight_decay: float = PAPER_WEIGHT_DECAY
    # CLIP text encoder for the hyper-network (classes *_Binary use the binary code instead)
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"  # open_clip tag; 'random-test-only' = random weights (tests and demo only)
    clip_weights: str = ""  # a local open_clip weights file, used instead of the tag
    # stage 3 (Eq. 3) and stage 4 (Eq. 7) weights
    lambda_seg: float = 0.1
    alpha_data: float = 1.0
    beta_kd: float = 0.1
    kd_pool_size: int = 8  # each KD feature map pooled to at most this many positions per axis
    kd_num_levels: int = 3  # the bottleneck and the deepest encoder skips
    # explicit predecessor checkpoints (default: found by nnU-Net's folder convention)
    stage1_checkpoint: str = ""
    stage2_checkpoint: str = ""
    stage3_checkpoint: str = ""
    # schedule overrides for quick runs (0 = the trainer's own value)
    iterations_per_epoch: int = 0
    val_iterations_per_epoch: int = 0
    num_epochs: int = 0
    save_every: int = 0  # checkpoint_latest every this many epochs
    seed: int = -1  # >= 0: seeds Python, numpy and torch, deterministic torch algorithms (with nnUNet_n_proc_DA=0)
    num_threads: int = 0  # > 0: torch's CPU threads (nnU-Net takes every core); the same count gives the same sums
    preview_cases: int = 2
    # 0: skip nnU-Net's validation of the fold at the end of a segmentation stage (it predicts every validation
    # case with mirroring; with fold 'all', every training case); quick runs and studies that evaluate elsewhere
    final_validation: int = 1
    # CPU training: 'keep' = freed memory stays in the process (no fresh pages for each step's activations; faster,
    # a little more peak memory); 'glibc' = glibc's defaults (Linux; elsewhere nothing changes)
    cpu_allocator: str = "keep"

    @property
    def full_set_p(self) -> float | None:
        """MDrop's probability of the whole available set, or None for uniform over all non-empty subsets."""
        return None if self.full_set_probability == "uniform" else float(self.full_set_probability)

    def validate(self) -> "AllStageConfig":
        if self.modality_dropout not in ("uniform", "none"):
            raise AllStageError(f"modality_dropout must be 'uniform' or 'none', got {self.modality_dropout!r}")
        try:
            p = self.full_set_p
        except ValueError:
            p = -1.0
        if p is not None and not 0.0 <= p <= 1.0:
            raise AllStageError(f"full_set_probability must be 'uniform' or a number in [0, 1], got "
                                f"{self.full_set_probability!r}")
        if self.segmentation_optimizer not in ("nnunet", "paper"):
            raise AllStageError(f"segmentation_optimizer must be 'nnunet' or 'paper', got "
                                f"{self.segmentation_optimizer!r}")
        if self.recovery_input not in ("available", "masked"):
            raise AllStageError(f"recovery_input must be 'available' or 'masked', got {self.recovery_input!r}")
        if self.student_init not in ("stage3", "stage2"):
            raise AllStageError(f"student_init must be 'stage3' or 'stage2', got {self.student_init!r}")
        if self.recovery_lr_scale < 0:
            raise AllStageError(f"recovery_lr_scale must be >= 0, got {self.recovery_lr_scale}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise AllStageError(f"mask_ratio must lie in [0, 1), got {self.mask_ratio}")
        if self.cpu_allocator not in ("keep", "glibc"):
            raise AllStageError(f"cpu_allocator must be 'keep' or 'glibc', got {self.cpu_allocator!r}")
        if self.mask_patch_size < 1 or self.kd_pool_size < 1 or self.kd_num_levels < 1:
            raise AllStageError("mask_patch_size, kd_pool_size and kd_num_levels must be positive")
        return self


# NNUNET_ALLSTAGE_* variables that are not options (the setup script's)
NON_OPTION_VARIABLES = ("NNUNET_ALLSTAGE_VENV",)


def check_environment_options(environ=None) -> None:
    """Every NNUNET_ALLSTAGE_* variable must name an option: a misspelt one would otherwise be ignored and the
    default used without a word."""
    import difflib
    environ = os.environ if environ is None else environ
    known = {ENV_PREFIX + f.name.upper() for f in fields(AllStageConfig)} | set(NON_OPTION_VARIABLES)
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else f"; options: {', '.join(sorted(known))}"
        raise AllStageError(f"environment variable {unknown[0]} is not an nnunet-allstage option{hint} (unset it, "
                            f"or spell it as the option is named)")


def load_config(preprocessed_folder: str | os.PathLike | None = None, environ=None) -> AllStageConfig:
    """The options: defaults, then the folder's allstage_config.json, then NNUNET_ALLSTAGE_* of ``environ`` (the
    process's environment by default; a run's own, e.g. one about to be started, otherwise)."""
    environ = os.environ if environ is None else environ
    check_environment_options(environ)
    values = {}
    if preprocessed_folder is not None:
        path = Path(preprocessed_folder) / CONFIG_FILE
        if path.is_file():
            try:
                values.update(json.loads(path.read_text()))
            except json.JSONDecodeError as e:
                raise AllStageError(f"{path}: not valid JSON ({e})") from None
    types = {f.name: f.type for f in fields(AllStageConfig)}
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise AllStageError(f"{CONFIG_FILE}: unknown option(s) {unknown}; known: {sorted(types)}")
    for name in types:
        env = environ.get(ENV_PREFIX + name.upper())
        if env is not None:
            values[name] = env
    default = AllStageConfig()
    converted = {}
    for name, value in values.items():
        kind = type(getattr(default, name))
        try:
            converted[name] = kind(value)
        except (TypeError, ValueError):
            raise AllStageError(f"option {name}: cannot read {value!r} as {kind.__name__}") from None
    config = AllStageConfig(**converted).validate()
    # which options the user set (file or environment), not a dataclass field: describe() records values only
    config.explicit_options = frozenset(converted)
    return config


def describe(config: AllStageConfig) -> str:
    return json.dumps(asdict(config), sort_keys=True)


def option_differences(recorded: dict, config: AllStageConfig, names) -> list[str]:
    """'name: recorded -> current' for each option of ``names`` whose recorded value differs from ``config``'s.
    An option the checkpoint does not record (written before the option existed) is unknown and differs, unless
    this run sets it explicitly: that is the user's statement of the value it was trained with."""
    current = asdict(config)
    explicit = getattr(config, "explicit_options", frozenset())
    out = []
    for name in names:
        if name not in recorded:
            if name not in explicit:
                out.append(f"{name}: not recorded -> {current[name]!r}")
            continue
        if str(recorded[name]) != str(current[name]):
            out.append(f"{name}: {recorded[name]!r} -> {current[name]!r}")
    return out


def check_same_options(recorded: dict, config: AllStageConfig, names, what: str, fix: str) -> None:
    differences = option_differences(recorded, config, names)
    unrecorded = [d.split(":")[0] for d in differences if ": not recorded ->" in d]
    if unrecorded:
        variables = ", ".join(ENV_PREFIX + n.upper() for n in unrecorded)
        raise AllStageError(f"{what} does not record the option(s) {', '.join(unrecorded)} (written before they "
                            f"existed), so what it was trained with is unknown: set {variables} (or the same keys in "
                            f"{CONFIG_FILE}) to the value(s) it was trained with to accept it knowingly, or retrain it")
    if differences:
        raise AllStageError(f"{what} was trained with other options ({'; '.join(differences)}): {fix}")
