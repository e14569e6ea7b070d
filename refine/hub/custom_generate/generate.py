"""refine as a transformers ``custom_generate`` decoding method (Hub layout).

Loaded by ``model.generate(custom_generate="<folder>", trust_remote_code=True, ...)``.
The method itself lives in the installed ``refine-decoding`` package
(``requirements.txt`` beside this file names it): this file hands the call back to
``model.generate`` with refine's ``custom_generate`` callable, so generate's own input
preparation and decoding mode (greedy, sampling, beam search) run first and each
decoded row is then refined.
"""

from refine.integrations.hf import custom_generate


def generate(model, **kwargs):
    """Decode as ``model.generate`` would, then refine every row.

    Extra keyword arguments: ``refine`` (a ``refine.RefineConfig`` or dict of its
    fields) and ``refine_tokenizer`` (defaults to the tokenizer saved beside the model).
    Returns what the callable form returns: a tensor of prompt + refined output rows,
    or a ``RefineGenerateOutput`` with ``return_dict_in_generate=True``.
    """
    kwargs.pop("custom_generate", None)
    return model.generate(custom_generate=custom_generate, **kwargs)
