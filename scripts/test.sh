#!/usr/bin/env bash
# Quick start 2/2: the test suite (pass pytest options through, e.g. -m "not slow").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-2}"
python -m pytest -ra --durations=15 "$@"
