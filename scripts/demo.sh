#!/usr/bin/env bash
# Quick start 1/2: the main job end to end on synthetic data made on the fly (CPU).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
nnunet-allstage demo "$@"
