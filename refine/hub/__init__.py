"""The Hugging Face Hub layout of refine as a transformers decoding method.

Community decoding methods ship as a folder (or Hub repository) holding
``custom_generate/generate.py`` and a README card; ``model.generate`` loads it with
``custom_generate="<folder or repo>", trust_remote_code=True``. :data:`FOLDER` is that
folder, installed with the package; its ``generate.py`` delegates to
:func:`refine.integrations.hf.custom_generate`, so the method is written once::

    import refine.hub
    out = model.generate(**enc, custom_generate=str(refine.hub.FOLDER), trust_remote_code=True,
                         refine={"objective": "mean"}, refine_tokenizer=tok, max_new_tokens=64)

Uploading the folder's contents to a Hub repository publishes the same method under a
repository name.
"""

from pathlib import Path

FOLDER = Path(__file__).resolve().parent

__all__ = ["FOLDER"]
