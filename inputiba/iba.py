"""The per-sample feature bottleneck (IBA, Schulz et al., ICLR 2020).

A bottleneck at a hidden layer replaces the layer's output ``R`` by
``Z = lam * R + (1 - lam) * eps``, ``eps ~ N(mu_R, sigma_R^2)``, and optimises
``lam = blur(sigmoid(alpha))`` per input so that the classifier keeps its
decision while as little information as possible passes. The information per
element is the capacity of :func:`inputiba.bottleneck.kl_capacity`.

All inputs of a call are optimised together: each has its own ``alpha`` and
its own noisy copies, and since the loss is a sum of per-input terms and Adam
works per element, the result for one input does not depend on the others.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import Adapter, adapter_for, batch_chunks, expand_valid, gather_chunks
from .bottleneck import kl_capacity, noisy_features, smooth_mask
from .estimation import FeatureStats, estimate_stats
from .memory import default_max_batch
from .precision import PRECISIONS, compute_dtype, lowered
from .seeding import InputStreams, Seeds, input_seeds
from .split import Split, outputs_match, split_at
from .hooks import (LayerNotReached, channels_last_where_safe, conv_layout, cudnn_rnn_disabled, forward_hooks,
                    layer_tensor, model_stamp, preserved_state, replaced, resolve_layer, with_layer_tensor)
from .validation import (check_finite, check_model, check_settings, model_device, resolve_targets, run_model,
                         slice_targets, with_overrides)

__all__ = ["IBAConfig", "IBAResult", "IBA", "BottleneckFit", "fit_bottleneck", "row_loss_for",
           "INFORMATION_TERMS"]

LossFn = Callable[[Tensor, object], Tensor]

#: How the capacity enters the loss (:attr:`IBAConfig.information`).
INFORMATION_TERMS = ("mean", "per_position")

# float16 fits scale the loss by this (and the gradient back), as a fixed-scale GradScaler would
_FLOAT16_LOSS_SCALE = 1024.0


@dataclass
class IBAConfig:
    """Settings of the per-sample bottleneck; the defaults are the published ones.

    Attributes:
        beta: weight of the information term, which is a mean over the feature
            elements (``beta = 10`` is the paper's ``10 / k``).
        steps: Adam steps per input.
        lr: Adam learning rate.
        n_copies: noisy copies of each input per step (the paper's batch of 10).
        init_alpha: initial logit of the mask (5 gives ``lam ≈ 0.993``).
        min_std: lower bound of the estimated feature std.
        sigma: std, in feature-map elements, of the Gaussian blur of the mask;
            0 turns smoothing off.
        relu: estimate a half-Gaussian noise with zero mean (for layers that
            follow a ReLU) and clamp the noisy features at 0.
        active_threshold: an element is active when more than this fraction of
            the estimation samples were non-zero there; inactive elements are
            zeroed and carry no information.
        max_batch: inputs optimised together at most (each with ``n_copies``
            rows); larger calls are split into chunks of this size. ``None``
            (the default): chosen by :func:`inputiba.memory.default_max_batch`,
            on a CPU from the size of the layer's features (one at a time for
            VGG16 or ResNet-50 at 224 px, where batches ran slower), 8
            elsewhere. Results do not depend on it.
        copies_at_layer: make the noisy copies at the layer, so that the
            network before it runs once per input instead of once per copy.
            Used only where a check shows it gives the same outputs (see
            :meth:`IBA._can_expand`); ``False`` always copies the input.
        shared_mask: one mask value per position, shared by all channels
            (text: one per token, over the embedding dimension); ``False``
            (the published choice): one per element.
        information: how the capacity enters the loss. ``"mean"`` (the
            published form): ``beta`` times its mean over the (real)
            elements. ``"per_position"``: ``beta`` times the sum over
            positions of its mean over the channels, so that a position's
            price does not depend on how many positions there are (text: a
            token costs the same in a short and in a long text).
        precision: what the network runs at during the fit
            (:data:`~inputiba.precision.PRECISIONS`): ``"float32"`` (the
            default), ``"bfloat16"``, ``"float16"``, or ``"auto"`` (bfloat16
            where the device runs it natively, else float32). The mask and the
            loss stay in float32. bfloat16 scores the same and runs up to 2x
            faster, but an input's map then changes by up to 1e-3 with the
            size of its batch (float32: 1e-5); see :mod:`inputiba.precision`.
    """

    beta: float = 10.0
    steps: int = 10
    lr: float = 1.0
    n_copies: int = 10
    init_alpha: float = 5.0
    min_std: float = 0.01
    sigma: float = 1.0
    relu: bool = False
    active_threshold: float = 0.01
    max_batch: int | None = None
    copies_at_layer: bool = True
    shared_mask: bool = False
    information: str = "mean"
    precision: str = "float32"

    def __post_init__(self) -> None:
        check_settings(self, positive=("steps", "n_copies", "lr"), non_negative=("beta", "sigma", "min_std"))
        if self.max_batch is not None:
            check_settings(self, positive=("max_batch",))
        if self.information not in INFORMATION_TERMS:
            raise ValueError(f"information must be one of {', '.join(INFORMATION_TERMS)}; "
                             f"got {self.information!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")

    @classmethod
    def text(cls, **overrides) -> "IBAConfig":
        """The feature bottleneck's settings for text (InputIBA's NLP defaults): beta 15, no blur."""
        return replace(cls(beta=15.0, sigma=0.0), **overrides)


@dataclass
class IBAResult:
    """Everything one :meth:`IBA.attribute` call computed, per input.

    Attributes:
        saliency: ``(B, H, W)`` bits per pixel at input resolution, ``(B, T)``
            bits per token for text (0 at padding), or ``None`` when an image
            model's layer output is not a ``(C, h, w)`` map.
        capacity: ``(B, *feature_shape)`` information per element, nats.
        lam: ``(B, *feature_shape)`` final mask ``blur(sigmoid(alpha))``.
        alpha: ``(B, *feature_shape)`` final mask logits.
        targets: ``(B,)`` class explained, or ``None`` with a custom loss.
        losses: ``(steps, B)`` total loss of each input at each step.
    """

    saliency: Tensor | None
    capacity: Tensor
    lam: Tensor
    alpha: Tensor
    targets: Tensor | None
    losses: Tensor = field(repr=False)


class IBA:
    """Per-sample information bottleneck at one layer of a model.

    Example::

        iba = IBA(model, layer="features.17")
        iba.estimate(loader, n_samples=1000)
        heat = iba.attribute(x, target=y)      # (B, H, W), bits per pixel

    A text classifier is explained per token by naming its embedding layer;
    its inputs are then ``(B, T)`` token ids, padded with the embedding's
    ``padding_idx``, and the bottleneck acts on a recurrent layer's output
    sequence::

        iba = IBA(lstm_model, layer="lstm.1", input_layer="embedding")
        bits = iba.attribute(ids, target=y)    # (B, T), bits per token

    The layer is hooked only while a method runs. During :meth:`estimate` and
    :meth:`attribute` the model is put in eval mode with frozen parameters;
    modes, ``requires_grad`` flags and hooks are restored afterwards, also
    when an exception is raised, and no parameter ``.grad`` is written.

    Args:
        model: the classifier to explain.
        layer: dotted module name (``"features.17"``) or the module itself.
        config: an :class:`IBAConfig` (default: the published one, or
            :meth:`IBAConfig.text` for text); keyword arguments override its
            fields.
        stats: previously estimated :class:`FeatureStats`.
        input_layer: the embedding layer of a text classifier (name or module).
        pad_index: padding id of the token inputs (default: the embedding's
            ``padding_idx``).
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module, config: IBAConfig | None = None,
                 stats: FeatureStats | None = None, *, input_layer: str | nn.Module | None = None,
                 pad_index: int | None = None, **overrides) -> None:
        check_model(model)
        if isinstance(model, torch.jit.ScriptModule):
            raise TypeError("a TorchScript model cannot be hooked inside, so no bottleneck can be "
                            "placed in it; load its weights into the eager (Python) model instead")
        self.model = model
        self.layer_name, self.layer = resolve_layer(model, layer)
        self.adapter: Adapter = adapter_for(model, input_layer, pad_index)
        if config is None:
            config = IBAConfig.text() if self.adapter.kind == "tokens" else IBAConfig()
        self.config = with_overrides(config, overrides, "IBA")
        self.stats = stats
        self._last_lam: Tensor | None = None
        self._expand_ok: dict[bool, bool] = {}
        self._split: tuple[tuple, Split | None] | None = None  # (model stamp, cut), traced once per state
        self._split_copies_ok: dict[bool, bool] = {}

    # ------------------------------------------------------------------ statistics
    def estimate(self, loader: Iterable, n_samples: int = 1000, progress: bool = False) -> FeatureStats:
        """Estimate the layer's noise distribution over the inputs a loader yields.

        Args:
            loader: yields input tensors or ``(inputs, targets)`` pairs.
            n_samples: number of samples to use (fewer if the loader ends first).
            progress: show a progress bar.

        Returns:
            The :class:`FeatureStats`, also kept in ``self.stats``.
        """
        cfg = self.config
        self.stats = estimate_stats(self.model, self.layer, loader, n_samples, relu=cfg.relu,
                                    min_std=cfg.min_std, active_threshold=cfg.active_threshold,
                                    layer_name=self.layer_name, progress=progress,
                                    positions=self.adapter.valid if self.adapter.pooled_dims else None)
        return self.stats

    def save_stats(self, path: str | os.PathLike) -> None:
        """Write the estimated statistics to ``path`` (atomically)."""
        self._require_stats().save(path)

    def load_stats(self, path: str | os.PathLike) -> FeatureStats:
        """Read statistics written by :meth:`save_stats` (``weights_only`` load).

        Also reads the feature part of a file written by a text
        :class:`~inputiba.pipeline.InputIBA`'s ``save_stats``.
        """
        state = FeatureStats.read_state(path)
        self.stats = FeatureStats.from_state_dict(state.get("feature", state), path)
        return self.stats

    def _require_stats(self) -> FeatureStats:
        if self.stats is None:
            raise RuntimeError("IBA has no feature statistics: call estimate(loader) or load_stats(path) first")
        return self.stats

    # ------------------------------------------------------------------ attribution
    def attribute(self, inputs: Tensor, target: int | Sequence[int] | Tensor | None = None, *,
                  loss_fn: LossFn | None = None, seed: Seeds = None,
                  return_result: bool = False) -> Tensor | IBAResult:
        """Explain each input with its own bottleneck.

        Args:
            inputs: ``(B, ...)`` batch the model accepts (e.g. ``(B, C, H, W)``,
                or ``(B, T)`` token ids with an ``input_layer``).
            target: class to explain: ``None`` for the predicted class, an int
                for all inputs, or one index per input.
            loss_fn: replaces the cross-entropy for other tasks. Called as
                ``loss_fn(outputs, targets)`` on the model's outputs for the
                ``B * n_copies`` noisy rows (the copies of input ``b`` are rows
                ``b * n_copies`` to ``(b + 1) * n_copies - 1``), with ``target``
                repeated the same way when it is a tensor with ``B`` rows and
                passed unchanged otherwise. Must return a ``(B * n_copies,)``
                loss per row.
            seed: seed of the bottleneck noise, for reproducible maps: an int
                (input ``i`` of the call gets ``input_seed(seed, i)``), one
                seed per input, or ``None`` (drawn from the global generator).
                An input's map does not depend on the rest of its batch or on
                ``max_batch`` (:mod:`inputiba.seeding`).
            return_result: return an :class:`IBAResult` instead of the map.

        Returns:
            ``(B, H, W)`` float tensor, bits per pixel (text: ``(B, T)`` bits
            per token, 0 at padding), on the model's device; or an
            :class:`IBAResult` when ``return_result`` is true.
        """
        stats = self._require_stats()
        if not isinstance(inputs, Tensor) or inputs.dim() < 2:
            raise ValueError("inputs must be a batched tensor of shape (B, ...)")
        if inputs.shape[0] == 0:
            raise ValueError("inputs hold no samples (batch size 0)")
        if self.adapter.kind == "tokens":
            self.adapter.check_inputs(inputs)
        elif not inputs.is_floating_point():
            raise ValueError(f"inputs are {inputs.dtype} ids: for a text model, name its embedding layer "
                             "with input_layer=")
        if self.config.sigma > 0 and not self.adapter.can_smooth(tuple(stats.shape)):
            raise ValueError(
                f"smoothing needs a (C, h, w) feature map (or a vision transformer's tokens) but layer "
                f"{self.layer_name!r} gives {tuple(stats.shape)}; use sigma=0")
        check_finite(inputs)
        device = model_device(self.model)
        inputs = inputs.to(device)
        B = inputs.shape[0]
        seeds = input_seeds(seed, B)
        chunks = batch_chunks(self.adapter, inputs, self.max_batch_for(inputs))
        parts = []
        with preserved_state(self.model), cudnn_rnn_disabled(self.model), \
                channels_last_where_safe([self.model], inputs):
            inputs = conv_layout(inputs)
            for index, length in chunks:
                # images: consecutive runs, sliced (a view keeps the memory layout)
                x = inputs[int(index[0]):int(index[-1]) + 1] if length is None else inputs[index, :length]
                part_target = slice_targets(target, index, B, loss_fn is not None)
                parts.append(self._attribute_chunk(x, part_target, loss_fn, [seeds[i] for i in index.tolist()],
                                                   stats))
        result = _gather_results(parts, chunks, B, None if self.adapter.kind != "tokens" else inputs.shape[1])
        self._last_lam = result.lam
        if return_result:
            return result
        if result.saliency is None:
            raise ValueError(
                f"layer {self.layer_name!r} gives features of shape {tuple(stats.shape)}, not a "
                "(C, h, w) map; use return_result=True for the per-element capacity")
        return result.saliency

    def max_batch_for(self, inputs: Tensor) -> int:
        """Inputs optimised together for a call on ``inputs``: ``config.max_batch``, or the default for
        the layer's feature size on the model's device (:func:`inputiba.memory.default_max_batch`)."""
        cfg = self.config
        if cfg.max_batch is not None:
            return cfg.max_batch
        stats = self._require_stats()
        positions = math.prod(inputs.shape[1:1 + self.adapter.pooled_dims])  # text: per token
        step_bytes = cfg.n_copies * stats.mean.numel() * positions * 4
        return default_max_batch(model_device(self.model), step_bytes)

    def _attribute_chunk(self, x: Tensor, target, loss_fn: LossFn | None, seed: list[int],
                         stats: FeatureStats) -> IBAResult:
        cfg = self.config
        B, S = x.shape[0], cfg.n_copies
        features, logits = self._clean_pass(x)
        if features.shape[1 + self.adapter.pooled_dims:] != stats.shape:
            raise ValueError(
                f"layer {self.layer_name!r} gives features of shape {tuple(features.shape[1:])} for "
                f"inputs of shape {tuple(x.shape[1:])}, but the statistics were estimated for "
                f"{tuple(stats.shape)}; estimate them at this input size")
        targets, row_loss = row_loss_for(target, logits, loss_fn, B, S)
        cut = self._cut(x, logits, S)
        expand = cut is not None or self._can_expand(x, features, logits, S)
        valid = self.adapter.valid(x)
        fit = fit_bottleneck(
            self.model, self.layer, "output", features, x if expand else x.repeat_interleave(S, dim=0),
            stats, cfg, row_loss, seed=seed, valid=expand_valid(valid, features), name=self.layer_name,
            channel_dim=self.adapter.feature_channel_dim, split=cut, smooth=self.adapter.smooth)
        saliency = self.adapter.feature_saliency(fit.capacity, x, valid)
        return IBAResult(saliency, fit.capacity, fit.lam, fit.alpha, targets, fit.losses)

    def _clean_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One forward pass without bottleneck: the layer's features and the outputs."""
        captured = {}

        def grab(module, args, output):
            # a copy: an in-place op after the layer (VGG's ReLU(inplace=True)) would change it
            captured["features"] = layer_tensor(output, self.layer_name).clone()

        with torch.no_grad(), forward_hooks([(self.layer, grab)]):
            logits = run_model(self.model, x)
        if "features" not in captured:
            raise LayerNotReached(
                f"the forward pass of {type(self.model).__name__} never called layer {self.layer_name!r}")
        return captured["features"], logits

    def _cut(self, x: Tensor, logits: Tensor, S: int) -> tuple[Split, tuple] | None:
        """The model cut after the layer, and the prefix's other values for ``S`` copies per input.

        Then the fit's steps run only the network after the layer
        (:mod:`inputiba.split`). ``None`` where the copies are made at the
        input, the model cannot be traced, or the cut does not reproduce
        ``logits`` for this batch (checked on every call, and once per model
        and batch kind for ``S`` copies per input).
        """
        if not self.config.copies_at_layer:
            return None
        stamp = model_stamp(self.model)
        if self._split is None or self._split[0] != stamp:
            self._split = (stamp, split_at(self.model, self.layer_name))
            self._split_copies_ok.clear()
        split = self._split[1]
        if split is None:
            return None
        key = x.shape[0] == 1
        others = split.check(x, logits, 1 if self._split_copies_ok.get(key) else S)
        self._split_copies_ok[key] = others is not None
        if others is None:
            return None
        return split, Split.repeat(others, x.shape[0], S)

    def _can_expand(self, x: Tensor, features: Tensor, logits: Tensor, S: int) -> bool:
        """Whether the noisy copies can be made at the layer instead of at the input.

        Then the network before the layer runs once per input rather than once
        per copy. This holds when nothing after the layer reads a tensor from
        before it with the batch's row count (e.g. a skip connection around the
        layer). The check: the copies made at the layer, without noise, must
        reproduce the clean outputs exactly. The answer is kept per model and
        layer, separately for batches of one.
        """
        if not self.config.copies_at_layer:
            return False
        key = x.shape[0] == 1
        if key in self._expand_ok:
            return self._expand_ok[key]
        if S == 1 or not isinstance(logits, Tensor):
            ok = S == 1
        else:
            def copies(module, args, output):
                return with_layer_tensor(output, features.repeat_interleave(S, dim=0))

            try:
                with torch.no_grad(), forward_hooks([(self.layer, copies)]):
                    out = self.model(x)
                ok = (isinstance(out, Tensor) and out.shape[0] == x.shape[0] * S
                      and outputs_match(out, logits.repeat_interleave(S, dim=0)))
            except Exception:
                ok = False
        self._expand_ok[key] = ok
        return ok

    # ------------------------------------------------------------------ restricting the flow
    @contextlib.contextmanager
    def restrict_flow(self, lam: Tensor | float | None = None) -> Iterator[None]:
        """Run the model with the bottleneck in place for the ``with`` block.

        Args:
            lam: mask to apply, broadcastable to the layer's ``(B, *shape)``
                output; ``None`` uses the masks of the last :meth:`attribute`
                call (the batch must then have the same size).

        The bottleneck draws fresh noise at every forward pass. The hook is
        removed when the block ends, also on error.
        """
        stats = self._require_stats()
        if lam is None:
            if self._last_lam is None:
                raise RuntimeError("restrict_flow() needs lam, or a previous attribute() call")
            lam = self._last_lam
        lam = torch.as_tensor(lam)

        def bottleneck(module, args, output):
            r = layer_tensor(output, self.layer_name)
            st = stats.to(r.device, r.dtype)
            mask = lam.to(r.device, r.dtype)
            if mask.dim() == r.dim() and mask.shape[0] not in (1, r.shape[0]):
                raise ValueError(f"the mask is for {mask.shape[0]} inputs but the batch has {r.shape[0]}")
            z = noisy_features(r, mask, st.mean, st.std, torch.randn_like(r)) * st.active
            return with_layer_tensor(output, z.clamp_min(0) if st.relu else z)

        with forward_hooks([(self.layer, bottleneck)]):
            yield


@dataclass
class BottleneckFit:
    """Result of :func:`fit_bottleneck`, per input.

    Attributes:
        alpha: ``(B, *shape)`` final mask logits.
        lam: ``(B, *shape)`` final mask ``blur(sigmoid(alpha))``.
        capacity: ``(B, *shape)`` information per element, nats.
        losses: ``(steps, B)`` total loss of each input at each step.
    """

    alpha: Tensor
    lam: Tensor
    capacity: Tensor
    losses: Tensor


@torch.enable_grad()  # also when called under no_grad (Captum's metrics do)
def fit_bottleneck(model: nn.Module, module: nn.Module, where: str, features: Tensor,
                   model_inputs: Tensor, stats: FeatureStats, config: IBAConfig,
                   row_loss: Callable[[Tensor], Tensor], prior: Tensor | None = None,
                   seed: Seeds = None, valid: Tensor | None = None,
                   name: str = "the layer", channel_dim: int = 1, stream: str = "bottleneck",
                   split: tuple[Split, tuple] | None = None,
                   smooth: Callable[[Tensor, float], Tensor] = smooth_mask) -> BottleneckFit:
    """Optimise one bottleneck mask per input; the loop both IBA stages share.

    The bottleneck replaces ``module``'s output (``where="output"``, a hidden
    layer) or its first input (``"input"``, e.g. the model's image input) by
    ``n_copies`` noisy copies per input, ``Z = lam * R + (1 - lam) * eps``.
    The loss of input ``b`` is the mean of ``row_loss`` over its copies plus
    ``beta`` times the mean capacity; the sum over inputs is minimised with
    Adam, which works per element, so the inputs do not influence each other.

    Args:
        model: the model, in the state it should run in (eval, frozen).
        module: where the bottleneck goes.
        where: ``"output"`` or ``"input"`` of ``module``.
        features: ``(B, *shape)`` the clean values ``R`` at that point.
        model_inputs: what ``model`` is called with: ``B`` rows when the
            copies can be made at the bottleneck, else ``B * n_copies``.
        stats: noise mean/std and active mask, each ``(*shape)``.
        config: steps, lr, beta, n_copies, init_alpha, sigma.
        row_loss: maps the model's outputs for the ``B * n_copies`` rows (the
            copies of input ``b`` are rows ``b * n_copies ...``) to a
            ``(B * n_copies,)`` loss.
        prior: optional ``(B, *shape)`` prior mask for the capacity
            (see :func:`inputiba.bottleneck.kl_capacity`).
        seed: seed of the noise: one per input, or a base seed for the
            inputs' indices (:func:`inputiba.seeding.input_seeds`); input
            ``b``'s noise comes from its own stream, so its fit does not
            depend on the other inputs.
        valid: optional 0/1 mask broadcastable to ``features`` of the real
            positions (text without its padding). Elsewhere the features pass
            unchanged and carry no capacity, and the information term is the
            mean over real elements only (with ``information="per_position"``
            the sum over real positions), so padding changes no result.
        name: the bottleneck's place, for error messages.
        channel_dim: the dimension of ``features`` (the batch is 0) that
            holds the channels: 1 for ``(B, C, h, w)``, 2 for text's
            ``(B, T, D)``; used by ``config.shared_mask`` and
            ``config.information="per_position"``.
        stream: which of each input's random streams the noise comes from
            (stages that share a seed use different streams).
        split: the model cut after ``module`` (``where="output"``) and the
            other values of its prefix, with ``n_copies`` rows per input
            (:class:`inputiba.split.Split`): the steps then run only the
            network after the layer, and ``model_inputs`` is not used.
        smooth: ``smooth(lam, sigma)`` blurs the mask (default
            :func:`~inputiba.bottleneck.smooth_mask` over the last two
            dimensions; a vision transformer's tokens over their patch grid,
            :meth:`inputiba.adapters.ImageAdapter.smooth`).

    The network runs at ``config.precision`` (:mod:`inputiba.precision`);
    the mask, its capacity and the optimiser stay in float32.

    Returns:
        A :class:`BottleneckFit` (``alpha`` and ``lam`` with 1 channel when
        the mask is shared).

    Raises:
        ValueError: the bottleneck's output does not reach the model's output
            (checked on the first step), so the fit could not mean anything.
    """
    B, S = features.shape[0], config.n_copies
    device = features.device
    st = stats.to(device, features.dtype)
    r = (features - st.mean) / st.std
    rep_features = features.repeat_interleave(S, dim=0)
    streams = InputStreams(input_seeds(seed, B), device, stream)

    def mask(alpha: Tensor) -> Tensor:
        return smooth(torch.sigmoid(alpha), config.sigma)

    if valid is not None:
        rep_valid = valid.repeat_interleave(S, dim=0)
        n_valid = valid.expand_as(features).flatten(1).sum(1)

    def information(lam: Tensor) -> Tensor:
        kl = kl_capacity(lam, r, st.active, prior)
        return kl if valid is None else kl * valid

    if config.shared_mask:
        mask_shape = list(features.shape)
        mask_shape[channel_dim] = 1
        alpha = features.new_full(mask_shape, config.init_alpha).requires_grad_(True)
    else:
        alpha = torch.full_like(features, config.init_alpha).requires_grad_(True)
    optimizer = torch.optim.Adam([alpha], lr=config.lr)
    current: dict[str, Tensor] = {}
    losses = []

    def bottleneck(original: Tensor) -> Tensor:
        # text: positions outermost, so padding does not change a text's noise
        noise = streams.randn(S, *features.shape[1:], dtype=rep_features.dtype,
                              first=0 if valid is None else 1).flatten(0, 1)
        lam = current["lam"].repeat_interleave(S, dim=0)
        z = noisy_features(rep_features, lam, st.mean, st.std, noise) * st.active
        if st.relu:
            z = z.clamp_min(0)
        if valid is not None:
            z = rep_features + rep_valid * (z - rep_features)
        current["z"] = z
        return z

    if split is None:
        network, place = model, replaced(module, where, bottleneck)
    else:
        network, place = split[0].suffix, contextlib.nullcontext()
    dtype = compute_dtype(config.precision, device)
    scale = _FLOAT16_LOSS_SCALE if dtype is torch.float16 else 1.0  # keep small gradients above underflow

    def forward(run) -> Tensor:
        if split is None:
            return run(model_inputs)
        return split[0].run_suffix(conv_layout(bottleneck(features)), split[1], run)

    with place, lowered(network, config.precision, device) as run:
        for step in range(config.steps):
            lam = mask(alpha)
            current["lam"] = lam
            out = forward(run)
            if isinstance(out, Tensor) and out.is_floating_point():
                out = out.float()  # the loss in float32 whatever precision the network ran at
            per_row = row_loss(out)
            if step == 0 and not _reaches(per_row, current["z"]):
                raise ValueError(
                    f"the bottleneck at {name} does not reach the model's output, so no attribution "
                    "can be learned; a recurrent layer's output sequence must feed the head (a head "
                    "reading the layer's final state (h, c) does not see it)")
            kl = information(lam).flatten(1)
            if config.information == "per_position":
                info = kl.sum(1) / features.shape[channel_dim]
            else:
                info = kl.mean(1) if valid is None else kl.sum(1) / n_valid
            per_input = per_row.view(B, S).mean(1) + config.beta * info
            (grad,) = torch.autograd.grad(per_input.sum() * scale, alpha)
            alpha.grad = grad / scale if scale != 1.0 else grad
            optimizer.step()
            losses.append(per_input.detach())

    with torch.no_grad():
        lam = mask(alpha)
        capacity = information(lam)
    return BottleneckFit(alpha.detach(), lam, capacity, torch.stack(losses))


def _reaches(output: Tensor, source: Tensor) -> bool:
    """Whether ``output`` was computed from ``source``: a walk of the autograd graph."""
    target = source.grad_fn
    if target is None or output.grad_fn is None:
        return False
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is target:
            return True
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(fn for fn, _ in node.next_functions)
    return False


def row_loss_for(target, logits: Tensor | None, loss_fn: LossFn | None, batch_size: int,
                 n_copies: int, device: torch.device | str = "cpu") -> tuple[Tensor | None, Callable]:
    """The explained classes and the per-row loss of ``n_copies`` copies per input.

    With the default cross-entropy, ``target`` is resolved against ``logits``
    (``None`` = predicted class; without logits it must be given) and
    returned as ``(B,)`` on the logits' device (else ``device``). With a custom
    ``loss_fn`` the classes are ``None`` and ``target`` is repeated per copy
    when it is a tensor with ``B`` rows (passed unchanged otherwise).

    Returns:
        ``(targets, row_loss)`` where ``row_loss(outputs)`` is ``(B * n_copies,)``.
    """
    rows = batch_size * n_copies
    if loss_fn is None:
        targets = resolve_targets(target, logits, batch_size,
                                  logits.device if logits is not None else device)
        repeated = targets.repeat_interleave(n_copies)
        return targets, lambda out: F.cross_entropy(out, repeated, reduction="none")
    if isinstance(target, Tensor) and target.dim() > 0 and target.shape[0] == batch_size:
        target = target.repeat_interleave(n_copies, dim=0)

    def row_loss(out: Tensor) -> Tensor:
        loss = loss_fn(out, target)
        if not isinstance(loss, Tensor) or loss.shape != (rows,):
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return one loss per noisy row, shape ({rows},); got {shape}")
        return loss

    return None, row_loss


def _gather_results(parts: list[IBAResult], chunks, total: int, length: int | None) -> IBAResult:
    """The results of :func:`~inputiba.adapters.batch_chunks`' batches, in the call's order."""
    if len(parts) == 1 and length in (None, parts[0].alpha.shape[1]):
        return parts[0]

    def gather(name, per_position=True, batch_dim=0):
        return gather_chunks([getattr(p, name) for p in parts], chunks, total,
                             length if per_position else None, batch_dim)

    return IBAResult(gather("saliency"), gather("capacity"), gather("lam"), gather("alpha"),
                     gather("targets", False), gather("losses", False, 1))
