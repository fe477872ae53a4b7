"""Sub-commands of the user's workflow (demo; train, predict and evaluate join here)."""
from __future__ import annotations

from pathlib import Path


def cmd_demo(args) -> None:
    from nnunet_allstage.demo import run_demo
    run_demo(Path(args.workdir), num_cases=args.num_cases, num_processes=args.np)


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="synthetic end-to-end run on the CPU")
    p.add_argument("--workdir", default="demo_output", help="where data, nnU-Net folders and results go")
    p.add_argument("-n", "--num-cases", type=int, default=12)
    p.add_argument("-np", type=int, default=2)
    p.set_defaults(func=cmd_demo)
