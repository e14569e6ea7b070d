"""The :class:`~refine.backends.base.GradientSession` capability of the Hugging Face session: gradients of log P
with respect to one-hot output tokens, and the relaxed (soft-token) objective with its gradient."""

from __future__ import annotations

import numpy as np

from ...errors import InputError, require
from ..base import TokenGradients
from ..prefix import common_prefix

torch = require("torch", "torch==2.13.0")


class HFGradients:
    """Mixin of :class:`~refine.backends.hf.session.HFSession` (uses its prompt, cache and forward counters)."""

    def gradient_cost(self, n_tokens: int) -> int:
        """The prompt minus its last token, if not cached yet, then ``n_tokens`` fed columns twice (forward and
        backward)."""
        return self._ensure_cost(self.prompt[:-1]) + 2 * int(n_tokens)

    def _grad_forward(self, embeds):
        """Logits ``(T, V)`` (fp32) of a differentiable forward of ``embeds (1, T, d)`` after the prompt minus its
        last token (cached once, without grad; the caller's cache is copied, never touched)."""
        n = len(self.prompt) - 1
        if common_prefix(self._cached, self.prompt[:-1]) < n:
            self._ensure(self.prompt[:-1])
        cache = self._fork(1, n)
        self._count(embeds.shape[1])
        pos = torch.arange(n, n + embeds.shape[1], device=self.backend.device)[None, :]
        out = self.model(inputs_embeds=embeds, past_key_values=cache, use_cache=True, position_ids=pos)
        return out.logits[0].float()

    def _embedding_matrix(self):
        emb = self.model.get_input_embeddings()
        if emb is None:
            raise InputError(f"{type(self.model).__name__} exposes no input embeddings (get_input_embeddings() is "
                             "None); gradient-guided strategies need them")
        return emb.weight

    def token_gradients(self, tokens):
        """One forward on ``prompt[-1:] + tokens[:-1]`` as embeddings with grad, one ``autograd.grad`` to those
        embeddings (never to the weights: the model's ``.grad`` stays untouched)."""
        toks = [int(t) for t in tokens]
        if not toks:
            raise ValueError("token_gradients(): empty sequence")
        dev = self.backend.device
        E = self._embedding_matrix()
        fed = torch.tensor([self.prompt[-1], *toks[:-1]], device=dev)
        with torch.enable_grad():
            x = E[fed].detach().clone()[None]  # (1, T, d): column 0 is the prompt's last token, held constant
            x.requires_grad_(True)
            logp = torch.log_softmax(self._grad_forward(x), dim=-1)  # (T, V)
            total = logp.gather(-1, torch.tensor(toks, device=dev)[:, None]).sum()
            (g,) = torch.autograd.grad(total, x)
        self._count(len(toks))  # the backward pass
        g = g[0, 1:].float()  # d L / d embedding of the fed y_0 .. y_{T-2}
        onehot = torch.zeros((len(toks), E.shape[0]), dtype=torch.float32, device=dev)
        if len(toks) > 1:
            onehot[:-1] = g @ E.detach().float().T
        return TokenGradients(logp.detach().double().cpu().numpy(), onehot.double().cpu().numpy())

    def relaxed_objective(self, candidates, logits):
        cand = torch.as_tensor(np.asarray(candidates, dtype=np.int64), device=self.backend.device)  # (T, K)
        if cand.ndim != 2 or cand.shape[0] == 0 or tuple(np.shape(logits)) != tuple(cand.shape):
            raise ValueError(f"relaxed_objective(): candidates {tuple(cand.shape)} and logits {np.shape(logits)} "
                             "have to be the same (T, K) shape, T >= 1")
        E = self._embedding_matrix()
        T = cand.shape[0]
        with torch.enable_grad():
            theta = torch.tensor(np.asarray(logits, dtype=np.float64), dtype=torch.float32,
                                 device=self.backend.device, requires_grad=True)
            w = torch.softmax(theta, dim=-1)  # (T, K)
            soft = (w[:, :, None] * E.detach()[cand].float()).sum(1)  # (T, d)
            first = E.detach()[torch.tensor([self.prompt[-1]], device=self.backend.device)].float()
            x = torch.cat([first, soft[:-1]], 0)[None].to(E.dtype)  # (1, T, d)
            logp = torch.log_softmax(self._grad_forward(x), dim=-1)  # (T, V)
            lp = logp.gather(-1, cand)  # (T, K)
            value = (w * torch.where(w > 0, lp, torch.zeros_like(lp))).sum()
            (g,) = torch.autograd.grad(value, theta)
        self._count(T)  # the backward pass
        return float(value.detach()), g.double().cpu().numpy()
