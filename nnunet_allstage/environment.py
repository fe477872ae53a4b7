"""Where things are: the trainer shim folder and the nnU-Net environment variables."""
from __future__ import annotations

import importlib.util
import os
import shlex
from pathlib import Path

NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def trainer_shim_dir() -> Path:
    """The folder for nnUNet_extTrainer: the repository's trainers/ (editable install) or its copy in the wheel."""
    spec = importlib.util.find_spec("nnunet_allstage.trainer_shim")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nnunet_allstage.trainer_shim is missing: reinstall the package (pip install -e .)")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def env_lines(base: Path | None = None) -> list[str]:
    base = base or Path.cwd()
    lines = [f"export nnUNet_extTrainer={shlex.quote(str(trainer_shim_dir()))}"]
    for name in NNUNET_FOLDERS:
        if not os.environ.get(name):
            lines.append(f"export {name}={shlex.quote(str(base / name))}")
    if not os.environ.get("nnUNet_def_n_proc"):
        lines.append(f"export nnUNet_def_n_proc={os.cpu_count() or 1}")
    return lines


def apply_default_env(base: Path | None = None) -> None:
    """Sets, in this process, whatever `env_lines` would export (used by the demo and the pipeline)."""
    os.environ["nnUNet_extTrainer"] = str(trainer_shim_dir())
    base = base or Path.cwd()
    for name in NNUNET_FOLDERS:
        os.environ.setdefault(name, str(base / name))
    os.environ.setdefault("nnUNet_def_n_proc", str(os.cpu_count() or 1))


def nnunet_folder(name: str) -> Path:
    """nnUNet_raw, nnUNet_preprocessed or nnUNet_results as set now (nnunetv2.paths reads them once, at import,
    and our commands and tests set them later)."""
    from nnunet_allstage.errors import AllStageError
    if not os.environ.get(name):
        raise AllStageError(f"{name} is not set; run `eval \"$(nnunet-allstage env)\"` or export it yourself")
    return Path(os.environ[name])


def dataset_name_from_id(dataset_id: int) -> str:
    from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name
    from nnunet_allstage.errors import AllStageError
    try:
        return convert_id_to_dataset_name(dataset_id)
    except RuntimeError:
        raise AllStageError(f"no dataset with id {dataset_id} in nnUNet_raw, nnUNet_preprocessed or nnUNet_results; "
                            f"convert one first (nnunet-allstage convert-brats / convert-folder)") from None


def model_folder(dataset_name: str, trainer: str, plans: str, configuration: str) -> Path:
    """A trained model's folder, named as nnU-Net's get_output_folder names it, under nnUNet_results as set now."""
    return nnunet_folder("nnUNet_results") / dataset_name / f"{trainer}__{plans}__{configuration}"


def keep_freed_memory_in_process() -> bool:
    """CPU training: glibc hands every freed block above its mmap threshold (at most 32 MB) straight back to the
    operating system, so each step faults in fresh, kernel-zeroed pages for its large activations; stage 4 keeps
    three networks' worth of them. Keeping freed memory in the process (mallopt: no mmap, no trimming) made a
    CPU step about 20 % faster for stock nnU-Net and 30 % for stage 4, for some 10-15 % more peak memory
    (documentation/benchmarks.md). Linux with glibc only; returns whether it was applied."""
    import ctypes
    import sys
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's malloc.h
    return libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2 ** 31 - 1) == 1
