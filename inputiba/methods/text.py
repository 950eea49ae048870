"""LIME for text classifiers (Ribeiro et al., 2016), through Captum.

Tokens are LIME's interpretable features: a perturbed text keeps a random
subset of its tokens and has the others' embeddings set to the baseline
(zeros), and a weighted linear model fitted to the target's score on the
perturbed texts gives each token its weight.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..hooks import features_at, replaced, resolve_layer
from .base import AttributionMethod, register, seeded
from .captum_methods import _captum

__all__ = ["LimeText"]


@register("lime")
class LimeText(AttributionMethod):
    """LIME over the tokens of a text, Captum's ``Lime`` on the embeddings.

    ``(B, T)`` the weight of each token in a linear surrogate of the target's
    logit, fitted on ``n_samples`` (the paper's 200) perturbed copies of the
    text, weighted by the exponential cosine-distance kernel (Captum's
    default); signed: positive where keeping the token raises the score; 0 at
    padding. The surrogate is Captum's ridge regression fitted by SGD
    (``SGDRidge``, pure PyTorch), from a seeded random state.

    Texts are explained one at a time (LIME fits one surrogate per text);
    each text's perturbations are scored ``perturbations_per_eval`` at a
    time.

    Args:
        embedding: the embedding layer (name or module).
        n_samples: perturbed texts per text.
        perturbations_per_eval: perturbed texts per forward pass.
        baseline: embedding value of a removed token.
        pad_index: padding id (default: the embedding's ``padding_idx``, else 0).
        seed: seed of the perturbations and the fit.
    """

    unit = "LIME token weight on the target logit (signed, 0 at padding)"
    modality = "tokens"

    def __init__(self, model: nn.Module, embedding: str | nn.Module = "embedding", n_samples: int = 200,
                 perturbations_per_eval: int = 50, baseline: float = 0.0, pad_index: int | None = None,
                 seed: int | None = 0) -> None:
        super().__init__(model)
        self.captum = _captum()
        self.embedding_name, self.embedding = resolve_layer(model, embedding)
        if pad_index is None:
            pad_index = getattr(self.embedding, "padding_idx", None)
        self.pad_index = 0 if pad_index is None else int(pad_index)
        if n_samples < 2 or perturbations_per_eval < 1:
            raise ValueError("n_samples must be at least 2 and perturbations_per_eval positive")
        self.n_samples, self.per_eval = n_samples, perturbations_per_eval
        self.baseline, self.seed = baseline, seed

    def _attribute(self, ids: Tensor, targets: Tensor) -> Tensor:
        from captum._utils.models.linear_model import SGDRidge

        out = torch.zeros(ids.shape, device=ids.device)
        for i in range(ids.shape[0]):
            length = int((ids[i] != self.pad_index).sum())
            text = ids[i:i + 1, :length]
            with torch.no_grad():
                emb = features_at(self.model, self.embedding, text, self.embedding_name)

            def forward(states: Tensor, text=text) -> Tensor:
                with replaced(self.embedding, "output", lambda original: states):
                    return self.model(text.expand(states.shape[0], -1))

            mask = torch.arange(length, device=ids.device).view(1, -1, 1).expand_as(emb)
            with seeded(self.seed, ids.device), torch.enable_grad():
                lime = self.captum.Lime(forward, interpretable_model=SGDRidge())
                weights = lime.attribute(emb, target=int(targets[i]), feature_mask=mask, baselines=self.baseline,
                                         n_samples=self.n_samples, perturbations_per_eval=self.per_eval)
            out[i, :length] = weights[0, :, 0].detach()
        return out
