"""Smoke test of an installed refine-decoding wheel, run from a folder outside the source tree.

`scripts/wheel_smoke.sh` copies this file next to a fresh virtual environment and runs it
there; it exits non-zero on the first failure. Argument: the source tree's root, which no
loaded module may come from.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(sys.argv[1]).resolve()
BIN = Path(sys.executable).parent


def run(*cmd: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if (proc.returncode == 0) != ok:
        sys.exit(f"FAIL {' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def check(cond: bool, what: str) -> None:
    if not cond:
        sys.exit(f"FAIL {what}")
    print(f"ok   {what}")


import refine  # noqa: E402
from refine.about import DISTRIBUTION  # noqa: E402

check(ROOT not in Path(refine.__file__).resolve().parents, f"refine imported from the venv ({refine.__file__})")
check(not Path.cwd().resolve().is_relative_to(ROOT), f"running outside the source tree ({Path.cwd()})")

out = run(str(BIN / "refine"), "--version").stdout
check(out.strip() == f"refine {refine.__version__} ({DISTRIBUTION})", f"refine --version: {out.strip()}")
check(run(str(BIN / "pip"), "show", DISTRIBUTION).stdout.count(f"Version: {refine.__version__}") == 1,
      f"pip show {DISTRIBUTION} gives the same version")
check("--cap-top-k" in run(str(BIN / "refine"), "serve", "--help").stdout, "refine serve --help")
bench = run(str(BIN / "refine"), "bench", ok=False)
check("benchmarks/" in bench.stderr and "source tree" in bench.stderr, "refine bench says where the benchmarks are")

# a refinement on the tiny test model, through the Python API and both HF forms
import torch  # noqa: E402

from refine.integrations.hf import custom_generate, generate  # noqa: E402
from refine.testing.tiny import char_tokenizer, tiny_llama  # noqa: E402
import refine.hub  # noqa: E402

tok, model = char_tokenizer(), tiny_llama()
prompt = tok("the cat", return_tensors="pt")
cfg = {"objective": "mean", "budget": {"max_sweeps": 1}}
res = refine.refine(prompt["input_ids"][0].tolist(), model=model, tokenizer=tok, max_new_tokens=12, **cfg)
check(res.score >= res.initial_score and json.loads(json.dumps(res.to_dict()))["text"] == res.text,
      f"refine.refine on the tiny model: {res.initial_score:.3f} -> {res.score:.3f}")
wrapped = generate(model, **prompt, tokenizer=tok, refine=cfg, max_new_tokens=12)
callable_form = model.generate(**prompt, custom_generate=custom_generate, refine=cfg, refine_tokenizer=tok,
                               max_new_tokens=12)
folder_form = model.generate(**prompt, custom_generate=str(refine.hub.FOLDER), trust_remote_code=True,
                             refine=cfg, refine_tokenizer=tok, max_new_tokens=12)
check(torch.equal(wrapped.sequences, callable_form) and torch.equal(callable_form, folder_form),
      "HF wrapper, custom_generate callable and Hub folder agree")

# the main job with the embedded default model
if os.environ.get("REFINE_SMOKE_MODEL", "1") == "1":
    proc = run(str(BIN / "refine"), "run", "Name a color.", "--max-new-tokens", "16", "--max-sweeps", "1",
               "--json", "--no-progress")
    data = json.loads(proc.stdout)
    check(data["score"] >= data["initial_score"], f"refine run with the default model: {data['text']!r}")

leaked = sorted({m.__name__ for m in list(sys.modules.values())
                 if getattr(m, "__file__", None) and ROOT in Path(m.__file__).resolve().parents})
check(not leaked, f"no module loaded from the source tree {leaked or ''}")
print("wheel smoke test passed")
