"""The command line every script of dataset_conversion/ shares: convert the dataset with the settings the script
spells out, or (``--to-portal``) write nnU-Net predictions with the dataset's own label values for submission."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from nnunet_allstage.conversion.dataset import default_num_processes
from nnunet_allstage.conversion.labels import inverse_label_map, relabel_folder
from nnunet_allstage.errors import AllStageError


EPILOG = """\
What every script does: it checks every case first (readable, 3D, finite, on one grid, known label values), then
writes the dataset into a temporary folder renamed into place at the end, so nothing half-written remains.
FM ratio: that fraction of the training subjects, round(R * N) and at least one, keeps every sequence; each other
subject loses 1 to M-1 of them at random (seeded; validation subjects drawn the same way, separately); the paper
reports 1 %, 10 % and 50 %. What was drawn is recorded in modality_availability.json beside dataset.json.
Labels: the source's values are mapped to nnU-Net's BraTS region convention (edema 1, necrosis 2, enhancing 3; its
Dataset137) by the script's LABEL_MAP; --to-portal maps predictions back for the challenge portal
(`nnunet-allstage predict --brats-labels YEAR` writes such values directly).
Next: nnunet-allstage plan -d ID, then nnunet-allstage train -d ID -f 0 (see documentation/training.md)."""


def dataset_script(doc: str, convert: Callable[..., Path], *, dataset_id: int, fm_ratio: float | None,
                   label_map: dict[int, int] | None, argv: list[str] | None = None) -> int:
    """Runs a dataset_conversion script; ``convert(src, dataset_id=, fm_ratio=, seed=, force=, num_processes=)``
    is the script's call into the library. Returns the exit status (2 on a user error, with the reason)."""
    parser = argparse.ArgumentParser(description=doc, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", nargs="?", help="the unpacked training folder")
    parser.add_argument("-d", "--dataset-id", type=int, default=dataset_id, help=f"default {dataset_id}")
    parser.add_argument("--fm-ratio", type=float, default=fm_ratio,
                        help=f"fraction of the training subjects that keep every modality (default {fm_ratio})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the FM simulation (and of a random split)")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset with this id")
    parser.add_argument("-np", type=int, default=None, help="processes (default: nnUNet_def_n_proc or the cores)")
    parser.add_argument("--to-portal", nargs=2, metavar=("PREDICTIONS", "OUTPUT"),
                        help="instead of converting: copy nnU-Net predictions (e.g. from nnUNetv2_predict) with "
                             "the dataset's own label values, as the challenge portal expects")
    args = parser.parse_args(argv)
    try:
        if args.to_portal:
            if label_map is None:
                raise AllStageError("this dataset keeps its label values: predictions need no relabelling")
            written = relabel_folder(Path(args.to_portal[0]), Path(args.to_portal[1]), inverse_label_map(label_map))
            print(f"wrote {len(written)} segmentation(s) with labels {sorted(set(label_map))} to {args.to_portal[1]}")
            return 0
        if not args.src:
            parser.error("the source folder is required (or --to-portal PREDICTIONS OUTPUT)")
        convert(Path(args.src), dataset_id=args.dataset_id, fm_ratio=args.fm_ratio, seed=args.seed,
                force=args.force, num_processes=args.np or default_num_processes())
    except AllStageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
