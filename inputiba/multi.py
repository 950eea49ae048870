"""Bottlenecks at several depths at once, and the layer plumbing they share.

:class:`MultiIBA` places one per-sample bottleneck at each of several layers
and optimises all masks together: one loss, the classifier's cross-entropy
plus the information terms of every bottleneck summed (the plan of the
"Info-Attribution" README, §2.2, never finished there). It returns one map per
depth and their sum.

Several layers are read in one forward pass with
:func:`inputiba.hooks.capture`; their statistics come from
:func:`inputiba.estimation.estimate_layer_stats`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from .bottleneck import capacity_to_saliency, kl_capacity, noisy_features, smooth_mask
from .estimation import FeatureStats, estimate_layer_stats
from .hooks import (LayerNotReached, capture, forward_hooks, layer_tensor, preserved_state, resolve_layers,
                    with_layer_tensor)
from .iba import IBAConfig, _reaches, row_loss_for
from .memory import default_max_batch
from .seeding import InputStreams, Seeds, input_seeds
from .validation import check_image_batch, check_model, model_device, slice_targets, with_overrides

__all__ = ["MultiIBAResult", "MultiIBA"]


@dataclass
class MultiIBAResult:
    """Everything one :meth:`MultiIBA.attribute` call computed, per input.

    Attributes:
        saliency: ``(B, H, W)`` bits per pixel: the sum of ``maps`` over layers.
        maps: ``{layer: (B, H, W)}`` bits per pixel that pass each bottleneck.
        capacity: ``{layer: (B, C, h, w)}`` information per element, nats,
            averaged over the noisy copies.
        lam: ``{layer: (B, C, h, w)}`` final masks ``blur(sigmoid(alpha))``.
        targets: ``(B,)`` the classes explained.
        losses: ``(steps, B)`` total loss of each input at each step.
    """

    saliency: Tensor
    maps: dict[str, Tensor]
    capacity: dict[str, Tensor]
    lam: dict[str, Tensor]
    targets: Tensor
    losses: Tensor = field(repr=False)


class MultiIBA:
    """Per-sample bottlenecks at several layers, optimised jointly.

    Each layer ``l`` gets its own mask logits ``alpha_l`` (one per feature
    element, per input) and its own noise ``eps_l ~ N(mu_l, sigma_l^2)`` from
    statistics estimated at that layer. In every step the model runs once
    with all bottlenecks in place; a deeper bottleneck acts on the features
    that reach it, which carry the noise of the shallower ones. The loss of
    input ``b`` is::

        mean over copies of CE(f(Z), y_b)  +  sum_l beta_l * mean_{c,h,w} KL_l

    Each layer's information term is a mean over its own elements (as in
    :class:`~inputiba.iba.IBA`, so ``beta = 10`` is the paper's ``10 / k``
    per layer) and so layers of different sizes weigh alike; with one layer
    the loss is exactly IBA's. ``KL_l`` is the capacity
    (:func:`~inputiba.bottleneck.kl_capacity`) of the features that reach the
    layer, averaged over the noisy copies; for the first layer these are the
    clean features. The reported capacity comes from one more pass with the
    final masks (the noise continues from the same seeded generator).

    The map of each layer is its capacity in bits per pixel at input
    resolution (:func:`~inputiba.bottleneck.capacity_to_saliency`); the
    combined map is their sum: the bits all bottlenecks together let through
    about each pixel, in the same unit.

    Example::

        multi = MultiIBA(model, ["features.5", "features.7"])
        multi.estimate(loader)
        res = multi.attribute(x, target=y, seed=0, return_result=True)
        res.maps["features.5"], res.saliency       # (B, H, W) bits per pixel

    The model is left as found: eval mode and frozen parameters for the call,
    hooks removed, no parameter ``.grad`` written.

    Args:
        model: an image classifier ``(B, C, H, W) -> (B, K)``.
        layers: dotted names or modules; each must give ``(B, C, h, w)`` maps.
        config: an :class:`~inputiba.iba.IBAConfig` shared by all layers
            (steps, lr, n_copies, beta, sigma, relu, ...); keyword arguments
            override its fields. MultiIBA runs in float32 (``precision``
            ``"auto"`` means float32 here; a lower one is refused).
        betas: one information weight per layer (default ``config.beta`` each).
        stats: ``{layer: FeatureStats}`` estimated earlier.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str | nn.Module], config: IBAConfig | None = None,
                 *, betas: Sequence[float] | None = None, stats: Mapping[str, FeatureStats] | None = None,
                 **overrides) -> None:
        check_model(model)
        self.config = with_overrides(config or IBAConfig(), overrides, "MultiIBA")
        if self.config.precision in ("bfloat16", "float16"):
            raise ValueError(f"MultiIBA runs in float32; precision={self.config.precision!r} is for IBA and "
                             "InputIBA (use 'auto' or 'float32')")
        if self.config.shared_mask or self.config.information != "mean":
            raise ValueError("MultiIBA has one mask value per element and the mean information term; "
                             "shared_mask and information='per_position' are for IBA and InputIBA")
        self.model = model
        self.layers = resolve_layers(model, layers)
        if betas is None:
            betas = [self.config.beta] * len(self.layers)
        if len(betas) != len(self.layers) or any(b < 0 for b in betas):
            raise ValueError(f"give one non-negative beta per layer ({len(self.layers)}), got {list(betas)}")
        self.betas = dict(zip(self.layers, map(float, betas)))
        self.stats: dict[str, FeatureStats] | None = dict(stats) if stats is not None else None

    @property
    def layer_names(self) -> list[str]:
        """The layers' dotted names, in the given order."""
        return list(self.layers)

    def estimate(self, loader: Iterable, n_samples: int = 1000, progress: bool = False) -> dict[str, FeatureStats]:
        """Estimate every layer's noise distribution over a loader, in one pass per batch.

        Returns:
            ``{layer: FeatureStats}``, also kept in ``self.stats``.
        """
        cfg = self.config
        self.stats = estimate_layer_stats(self.model, self.layers, loader, n_samples, relu=cfg.relu,
                                          min_std=cfg.min_std, active_threshold=cfg.active_threshold,
                                          progress=progress)
        return self.stats

    def _require_stats(self) -> dict[str, FeatureStats]:
        if self.stats is None:
            raise RuntimeError("MultiIBA has no feature statistics: call estimate(loader) first")
        missing = [name for name in self.layers if name not in self.stats]
        if missing:
            raise RuntimeError(f"MultiIBA has no feature statistics for layer(s) {missing}: call estimate(loader)")
        for name in self.layers:
            if len(self.stats[name].shape) != 3:
                raise ValueError(f"layer {name!r} gives features of shape {tuple(self.stats[name].shape)}, "
                                 "not (C, h, w) maps")
        return self.stats

    def attribute(self, inputs: Tensor, target: int | Sequence[int] | Tensor | None = None, *,
                  seed: Seeds = None, return_result: bool = False) -> Tensor | MultiIBAResult:
        """Explain each input with its own bottlenecks at every layer.

        Args:
            inputs: ``(B, C, H, W)`` float images.
            target: ``None`` (the predicted class), an int, or one index per input.
            seed: seed of the bottlenecks' noise, for reproducible maps: an
                int (input ``i`` of the call gets ``input_seed(seed, i)``),
                one seed per input, or ``None`` (:mod:`inputiba.seeding`).
            return_result: return a :class:`MultiIBAResult` with the map of
                every layer instead of the combined map.

        Returns:
            ``(B, H, W)`` float tensor, bits per pixel summed over the layers,
            on the model's device; or a :class:`MultiIBAResult`.
        """
        stats = self._require_stats()
        check_image_batch(inputs, "MultiIBA")
        inputs = inputs.to(model_device(self.model))
        step = self.config.max_batch or default_max_batch(
            model_device(self.model), self.config.n_copies * 4 * sum(s.mean.numel() for s in stats.values()))
        seeds = input_seeds(seed, inputs.shape[0])
        parts = []
        with preserved_state(self.model):
            for start in range(0, inputs.shape[0], step):
                sl = slice(start, start + step)
                part_target = slice_targets(target, sl, inputs.shape[0])
                parts.append(self._attribute_chunk(inputs[sl], part_target, seeds[sl], stats))
        result = parts[0] if len(parts) == 1 else _concat(parts)
        return result if return_result else result.saliency

    @torch.enable_grad()  # also when called under no_grad (Captum's metrics do)
    def _attribute_chunk(self, x: Tensor, target, seeds: list[int],
                         stats: Mapping[str, FeatureStats]) -> MultiIBAResult:
        cfg = self.config
        B, S = x.shape[0], cfg.n_copies
        with torch.no_grad():
            clean, logits = capture(self.model, self.layers, x, run_to_end=True)
        for name, features in clean.items():
            if features.shape[1:] != stats[name].shape:
                raise ValueError(
                    f"layer {name!r} gives features of shape {tuple(features.shape[1:])} for inputs of shape "
                    f"{tuple(x.shape[1:])}, but its statistics were estimated for {tuple(stats[name].shape)}")
        targets, row_loss = row_loss_for(target, logits, None, B, S)
        device = x.device
        st = {name: stats[name].to(device, clean[name].dtype) for name in self.layers}
        streams = InputStreams(seeds, device, "bottleneck")
        alphas = {name: torch.full_like(f, cfg.init_alpha).requires_grad_(True) for name, f in clean.items()}
        optimizer = torch.optim.Adam(list(alphas.values()), lr=cfg.lr)
        lams: dict[str, Tensor] = {}
        info: dict[str, Tensor] = {}
        noisy: dict[str, Tensor] = {}

        def bottleneck(name: str):
            s = st[name]

            def hook(module, args, output):
                r_in = layer_tensor(output, name)
                lam = lams[name].repeat_interleave(S, dim=0)
                noise = streams.randn(S, *r_in.shape[1:], dtype=r_in.dtype).flatten(0, 1)
                z = noisy_features(r_in, lam, s.mean, s.std, noise) * s.active
                if s.relu:
                    z = z.clamp_min(0)
                info[name] = kl_capacity(lam, (r_in - s.mean) / s.std, s.active)
                noisy[name] = z
                return with_layer_tensor(output, z)
            return hook

        def run() -> Tensor:
            info.clear()
            noisy.clear()
            out = self.model(x_rep)
            missing = [name for name in self.layers if name not in info]
            if missing:
                raise LayerNotReached(f"the forward pass never called layer(s) {missing}")
            return out

        def masks() -> dict[str, Tensor]:
            return {name: smooth_mask(torch.sigmoid(a), cfg.sigma) for name, a in alphas.items()}

        x_rep = x.repeat_interleave(S, dim=0)
        losses = []
        with forward_hooks([(module, bottleneck(name)) for name, module in self.layers.items()]):
            for step in range(cfg.steps):
                lams.update(masks())
                per_row = row_loss(run())
                if step == 0:
                    cut = [name for name in self.layers if not _reaches(per_row, noisy[name])]
                    if cut:
                        raise ValueError(f"the bottleneck(s) at {cut} do not reach the model's output, so no "
                                         "attribution can be learned there")
                per_input = per_row.view(B, S).mean(1)
                for name in self.layers:
                    per_input = per_input + self.betas[name] * info[name].flatten(1).mean(1).view(B, S).mean(1)
                grads = torch.autograd.grad(per_input.sum(), list(alphas.values()))
                for alpha, grad in zip(alphas.values(), grads):
                    alpha.grad = grad
                optimizer.step()
                losses.append(per_input.detach())
            with torch.no_grad():
                lams.update(masks())
                run()
                capacity = {name: info[name].view(B, S, *info[name].shape[1:]).mean(1) for name in self.layers}
        size = tuple(x.shape[-2:])
        maps = {name: capacity_to_saliency(c, size) for name, c in capacity.items()}
        saliency = torch.stack(list(maps.values())).sum(0)
        return MultiIBAResult(saliency, maps, capacity, {n: lam.detach() for n, lam in lams.items()},
                              targets, torch.stack(losses))


def _concat(parts: list[MultiIBAResult]) -> MultiIBAResult:
    def cat_dict(name):
        return {k: torch.cat([getattr(p, name)[k] for p in parts]) for k in getattr(parts[0], name)}

    return MultiIBAResult(torch.cat([p.saliency for p in parts]), cat_dict("maps"), cat_dict("capacity"),
                          cat_dict("lam"), torch.cat([p.targets for p in parts]),
                          torch.cat([p.losses for p in parts], dim=1))
