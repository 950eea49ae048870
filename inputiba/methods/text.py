"""Baselines for text classifiers: gradients, Integrated Gradients, occlusion and LIME on the tokens.

Every method here explains ``(B, T)`` right-padded token ids through the
model's embedding layer (``input_layer``, as IBA and InputIBA take it) and
returns ``(B, T)`` scores, one per token, 0 at padding:

- ``token_gradient``: the norm of the target logit's gradient at each token's
  embedding (Li et al., 2016, "Visualizing and understanding neural models in
  NLP").
- ``token_gradient_x_input``: gradient times embedding, summed over the
  embedding (Denil et al., 2014; the first-order change of the logit when the
  embedding is removed).
- ``token_integrated_gradients``: Integrated Gradients (Sundararajan et al.,
  2017) from the zero embedding, Captum's implementation on the embeddings.
- ``token_occlusion``: leave one token out (Li et al., 2016, "Understanding
  neural networks through representation erasure"): the drop of the target
  logit when the token's embedding is set to zero.
- ``lime``: LIME (Ribeiro et al., 2016), Captum's implementation: tokens are
  the interpretable features, removed ones get the baseline embedding.

Special tokens (a transformer's ``[CLS]``, ``[SEP]``: the
:class:`~inputiba.adapters.TokenAdapter`'s ``special_ids``) are the same in
every input and no part of its text: the gradient, Integrated Gradients and
occlusion methods neither move them nor score them (0), as InputIBA's input
stage does.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..adapters import TokenAdapter
from ..evaluation import TextScorer, movable_tokens
from ..hooks import cudnn_rnn_disabled, features_at, replaced
from ..validation import run_model
from .base import AttributionMethod, register, seeded
from .captum_methods import _captum

__all__ = ["TokenMethod", "TokenGradient", "TokenGradientInput", "TokenIntegratedGradients", "TokenOcclusion",
           "LimeText"]


class TokenMethod(AttributionMethod):
    """Base of the token baselines: the embedding layer, padding and special tokens of a text model.

    Args:
        model: a text classifier mapping ``(B, T)`` token ids to ``(B, K)`` logits.
        input_layer: its embedding layer (name or module).
        pad_index: the padding id (default: the model's or the embedding's).
    """

    modality = "tokens"

    def __init__(self, model: nn.Module, input_layer: str | nn.Module = "embedding",
                 pad_index: int | None = None) -> None:
        super().__init__(model)
        self.tokens = TokenAdapter(model, input_layer, pad_index)
        self.pad_index = self.tokens.pad_index

    def movable(self, ids: Tensor) -> Tensor:
        """``(B, T)`` bool: the tokens of the texts, neither padding nor special."""
        return movable_tokens(ids, self.pad_index, self.tokens.special_ids)

    def embeddings(self, ids: Tensor) -> Tensor:
        """``(B, T, D)`` the embedding layer's output for ``ids``, detached."""
        with torch.no_grad():
            return features_at(self.model, self.tokens.embedding, ids, self.tokens.embedding_name).detach()

    def logits_at(self, ids: Tensor, states: Tensor) -> Tensor:
        """The model's logits on ``ids`` with the embedding layer's output replaced by ``states``."""
        with replaced(self.tokens.embedding, "output", lambda original: states):
            return run_model(self.model, ids)

    def gradient(self, ids: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(grad, emb)``: the target logits' gradient at the embeddings and the embeddings, ``(B, T, D)``."""
        emb = self.embeddings(ids).requires_grad_(True)
        with torch.enable_grad(), cudnn_rnn_disabled(self.model):
            logit = self.logits_at(ids, emb).gather(1, targets[:, None]).sum()
            (grad,) = torch.autograd.grad(logit, emb)
        return grad, emb.detach()


@register("token_gradient")
class TokenGradient(TokenMethod):
    """The norm of the target logit's gradient at each token's embedding.

    ``(B, T)``, ``>= 0``: ``||d logit / d e_t||_2``, how sensitive the score
    is to token ``t``'s embedding; 0 at padding and special tokens.
    """

    unit = "L2 norm of the target logit's gradient at the token's embedding (>= 0)"

    def _attribute(self, ids: Tensor, targets: Tensor) -> Tensor:
        grad, _ = self.gradient(ids, targets)
        return grad.norm(dim=-1) * self.movable(ids)


@register("token_gradient_x_input")
class TokenGradientInput(TokenMethod):
    """Gradient times embedding, summed over the embedding's dimensions.

    ``(B, T)``, signed: ``sum_d e_td * d logit / d e_td``, the first-order
    change of the target logit when token ``t``'s embedding is removed
    (positive: the token raises the score); 0 at padding and special tokens.
    """

    unit = "gradient x embedding on the target logit, summed over the embedding (signed)"

    def _attribute(self, ids: Tensor, targets: Tensor) -> Tensor:
        grad, emb = self.gradient(ids, targets)
        return (grad * emb).sum(dim=-1) * self.movable(ids)


@register("token_integrated_gradients")
class TokenIntegratedGradients(TokenMethod):
    """Integrated Gradients at the embeddings, Captum's implementation.

    The path runs from the zero embedding to each token's embedding; padding
    and special tokens keep their embeddings all along it. ``(B, T)``, signed,
    summed over the embedding: the scores add up to about ``logit(text) -
    logit(text with every token's embedding zero)``; 0 at padding and
    special tokens.

    Args:
        input_layer: the embedding layer.
        n_steps: points on the path (Captum's Gauss-Legendre rule; 50 in the paper).
        batch_size: rows (texts x path points) per forward pass.
        pad_index: the padding id.
    """

    unit = "target logit change attributed per token, summed over the embedding (signed)"

    def __init__(self, model: nn.Module, input_layer: str | nn.Module = "embedding", n_steps: int = 50,
                 batch_size: int = 64, pad_index: int | None = None) -> None:
        super().__init__(model, input_layer, pad_index)
        if n_steps < 1 or batch_size < 1:
            raise ValueError(f"n_steps and batch_size must be positive, got {n_steps} and {batch_size}")
        self.captum = _captum()
        self.n_steps, self.batch_size = n_steps, batch_size

    def _attribute(self, ids: Tensor, targets: Tensor) -> Tensor:
        emb = self.embeddings(ids)
        movable = self.movable(ids)
        baseline = emb * (~movable).unsqueeze(-1)

        def forward(states: Tensor, text: Tensor) -> Tensor:
            return self.logits_at(text, states)

        with torch.enable_grad(), cudnn_rnn_disabled(self.model):
            ig = self.captum.IntegratedGradients(forward)
            att = ig.attribute(emb, baselines=baseline, target=targets, additional_forward_args=(ids,),
                               n_steps=self.n_steps, internal_batch_size=self.batch_size)
        return att.sum(dim=-1).detach() * movable


@register("token_occlusion")
class TokenOcclusion(TokenMethod):
    """Leave one token out: the drop of the target logit when its embedding is set to zero.

    ``(B, T)``, signed: ``logit(text) - logit(text without token t)``, one
    forward pass per token (``batch_size`` at a time); 0 at padding and
    special tokens.

    Args:
        input_layer: the embedding layer.
        batch_size: texts with one token removed per forward pass.
        pad_index: the padding id.
    """

    unit = "drop of the target logit when the token's embedding is zero (signed)"

    def __init__(self, model: nn.Module, input_layer: str | nn.Module = "embedding", batch_size: int = 128,
                 pad_index: int | None = None) -> None:
        super().__init__(model, input_layer, pad_index)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size

    @torch.no_grad()
    def _attribute(self, ids: Tensor, targets: Tensor) -> Tensor:
        movable = self.movable(ids)
        emb = self.embeddings(ids)
        clean = self.logits_at(ids, emb).gather(1, targets[:, None])
        owner, position = movable.nonzero(as_tuple=True)
        scorer = TextScorer(self.model, ids, self.tokens.embedding)
        out = torch.zeros(ids.shape, dtype=clean.dtype, device=ids.device)
        for lo in range(0, len(owner), self.batch_size):
            b, t = owner[lo:lo + self.batch_size], position[lo:lo + self.batch_size]
            states = emb[b].clone()
            states[torch.arange(len(b), device=ids.device), t] = 0
            logits = scorer(states.transpose(1, 2), b)
            out[b, t] = clean[b, 0] - logits.gather(1, targets[b][:, None])[:, 0]
        return out


@register("lime")
class LimeText(TokenMethod):
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
        input_layer: the embedding layer (name or module).
        n_samples: perturbed texts per text.
        perturbations_per_eval: perturbed texts per forward pass.
        baseline: embedding value of a removed token.
        pad_index: padding id (default: the model's or the embedding's).
        seed: seed of the perturbations and the fit.
    """

    unit = "LIME token weight on the target logit (signed, 0 at padding)"

    def __init__(self, model: nn.Module, input_layer: str | nn.Module = "embedding", n_samples: int = 200,
                 perturbations_per_eval: int = 50, baseline: float = 0.0, pad_index: int | None = None,
                 seed: int | None = 0) -> None:
        super().__init__(model, input_layer, pad_index)
        self.captum = _captum()
        self.embedding_name, self.embedding = self.tokens.embedding_name, self.tokens.embedding
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
