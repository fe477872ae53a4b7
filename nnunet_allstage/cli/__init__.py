"""The `nnunet-allstage` command. Each sub-command is a thin layer over a library function; the data commands
live in ``cli.data``, the model commands (train, validate, predict, evaluate, demo) in ``cli.model``."""
from __future__ import annotations

import argparse
import sys

from nnunet_allstage.cli import data, model
from nnunet_allstage.config import check_environment_options
from nnunet_allstage.errors import AllStageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnunet-allstage", description="Brain-tumour segmentation with missing MRI sequences on nnU-Net: convert, "
                                            "plan, train (four stages), validate, predict, synthesize, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)
    data.add_commands(sub)
    model.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_environment_options()  # a misspelt NNUNET_ALLSTAGE_* variable never passes silently
        args.func(args)
    except AllStageError as e:
        print(f"nnunet-allstage: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nnunet-allstage: interrupted", file=sys.stderr)
        return 130
    return 0
