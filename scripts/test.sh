#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh), run the test suite, then check the built wheel
# in a fresh virtual environment outside the checkout (scripts/wheel_smoke.sh).
#   bash scripts/test.sh            # default suite + wheel check (what CI runs)
#   bash scripts/test.sh -m slow    # extra pytest arguments are passed through (the wheel check runs
#                                   # only with no arguments)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest "$@"
if [ "$#" -eq 0 ]; then
  bash scripts/wheel_smoke.sh
fi
