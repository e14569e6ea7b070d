#!/usr/bin/env bash
# Set up the environment (scripts/setup.sh) and run the test suite.
#   bash scripts/test.sh            # default suite (what CI runs)
#   bash scripts/test.sh -m slow    # extra pytest arguments are passed through
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
