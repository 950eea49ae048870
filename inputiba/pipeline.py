"""InputIBA (Zhang et al., NeurIPS 2021): feature bottleneck -> WGAN -> input bottleneck.

1. The feature stage (:class:`inputiba.iba.IBA`) finds which features at a
   hidden layer the decision needs.
2. The prior ``lambda_G`` on the input starts from the feature stage's map
   (:func:`inputiba.adapters.mask_start_logits`); the GAN stage
   (:func:`inputiba.gan.fit_gan`), when the schedule has one, trains it so
   that its induced features look like the bottlenecked ones.
3. The input stage (:func:`inputiba.input_stage.fit_input_bottleneck`) puts a
   bottleneck on the input itself, with ``lambda_G`` as its prior, and gives
   a mask in ``[0, 1]`` at input resolution.

The default schedule has no GAN stage and starts the prior at the feature
map's bits per cell (see :class:`InputIBAConfig`); ``InputIBAConfig.published()``
runs the paper's schedule.

All inputs of a call run through the stages together, each with its own
masks, generator parameters and critic. Text classifiers go through the same
stages on their embedding layer's output (:mod:`inputiba.adapters`).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from .adapters import MASK_STARTS, adapter_for, batch_chunks, gather_chunks
from .estimation import FeatureStats, estimate_stats
from .gan import BatchedCritic, GANConfig, GANResult, fit_gan
from .hooks import channels_last_where_safe, conv_layout, cudnn_rnn_disabled, features_at, preserved_state
from .iba import IBA, BottleneckFit, IBAConfig, IBAResult, LossFn, _gather_results, row_loss_for
from .input_stage import (INPUT_DEFAULTS, TEXT_INPUT_DEFAULTS, TEXT_INPUT_PUBLISHED, fit_input_bottleneck,
                          input_attribution)
from .io import atomic_path
from .memory import activation_bytes, check_fits
from .seeding import Seeds, input_seeds
from .validation import check_finite, check_settings, model_device, slice_targets

__all__ = ["PRESETS", "preset_for", "InputIBAConfig", "SCHEDULES", "schedule", "InputIBAResult", "InputIBA"]

def _vit_preset(model: nn.Module) -> dict:
    return {"layer": f"blocks.{max(0, len(model.blocks) // 2 - 1)}"}


#: Bottleneck layer and feature-stage settings per architecture family,
#: matched by class name (``timm.`` names only for ``timm``'s classes); a
#: value is the settings or a function of the model that gives them.
#:
#: - ``VGG``: VGG16's ``conv4_1`` before its ReLU (``features.17``), the
#:   published layer: 1/8 of the input resolution, two thirds of the way up.
#: - ``ResNet``: the output of ``layer2`` (the second of four stages, 1/8
#:   resolution) with the ReLU (half-Gaussian) estimator, since it is rectified.
#: - ``timm.ConvNeXt``: the output of ``stages.1``, the same place as
#:   ResNet's preset (the second of four stages, 1/8 resolution); its
#:   residual stream is not rectified, so the Gaussian estimator.
#: - ``timm.VisionTransformer`` (ViT, DeiT, distilled DeiT): the token output
#:   of block ``L // 2 - 1`` of ``L``, halfway up as for text transformers
#:   (:mod:`inputiba.hf`): ViT tokens stay tied to their patch through the
#:   depth of the network, more so in the lower half, and the patch grid
#:   (:class:`inputiba.adapters.TokenGrid`) is what the prior and the map
#:   are drawn on; the class token is bottlenecked with the patches.
PRESETS: dict[str, dict | Callable[[nn.Module], dict]] = {
    "VGG": {"layer": "features.17"},
    "ResNet": {"layer": "layer2", "relu": True},
    "timm.ConvNeXt": {"layer": "stages.1"},
    "timm.VisionTransformer": _vit_preset,
}


def _feature_defaults() -> IBAConfig:
    return IBAConfig(beta=20.0, sigma=0.0)


def _input_defaults() -> IBAConfig:
    return replace(INPUT_DEFAULTS, steps=20)


@dataclass
class InputIBAConfig:
    """Settings of the three stages. The defaults are the library's vision schedule.

    The default differs from the published schedule (:meth:`published`) in
    three measured ways (``benchmarks/RESULTS.md``, *InputIBA: the schedule*):
    the input prior ``lambda_G`` starts at the feature map's bits per cell used
    as logits (``mask_start="bits"``), there is no GAN stage (a GAN that
    learns moved the prior away from that start and scored worse; one at the
    published learning rates barely moved it and changed no score), and the
    input stage takes 20 steps instead of 60 (no worse, and more stable
    across seeds).

    Attributes:
        feature: feature stage (beta 20, no smoothing, 10 steps, lr 1, 10 copies).
        gan: GAN stage (:class:`inputiba.gan.GANConfig`); ``None`` (the
            default) skips it, and the input stage's prior is the start itself.
        input: input stage (beta 20, 20 steps, lr 1, 10 copies, blur sigma 1).
        max_batch: inputs run through the stages together at most; ``None``
            (the default): the feature stage's choice for the layer's size
            (:meth:`inputiba.iba.IBA.max_batch_for`: one at a time on a CPU
            for VGG16 or ResNet-50 at 224 px, 8 on a GPU).
        mask_start: where the prior ``lambda_G`` starts, from the feature
            stage's capacity (:func:`inputiba.adapters.mask_start_logits`).
    """

    feature: IBAConfig = field(default_factory=_feature_defaults)
    gan: GANConfig | None = None
    input: IBAConfig = field(default_factory=_input_defaults)
    max_batch: int | None = None
    mask_start: str = "bits"

    def __post_init__(self) -> None:
        if self.max_batch is not None:
            check_settings(self, positive=("max_batch",))
        if self.mask_start not in MASK_STARTS:
            raise ValueError(f"mask_start must be one of {', '.join(MASK_STARTS)}; got {self.mask_start!r}")

    @classmethod
    def published(cls, text: bool = False) -> "InputIBAConfig":
        """The published schedule and starting point, to reproduce the paper's method.

        Vision: feature stage beta 20 (10 steps, no blur); the GAN's mask
        starts at the feature map in bits per pixel used as logits and trains
        20 epochs of 200 samples with the original critic (BatchNorm, weight
        clipping, RMSprop; mask lr 0.003); input stage beta 20, 60 steps, lr 1,
        blur 1. Text (``text=True``): feature beta 15; GAN mask lr 0.03; input
        beta 30, 30 steps, lr 0.5; no blur anywhere. The real samples use the
        feature mask ``lambda`` (the original code's capacity there is
        ``GANConfig(real_mask="capacity")``).
        """
        if text:
            return cls(feature=IBAConfig.text(), gan=GANConfig(critic="clip", lr_mask=0.03),
                       input=replace(TEXT_INPUT_PUBLISHED), mask_start="bits_per_pixel")
        return cls(feature=_feature_defaults(), gan=GANConfig(critic="clip"), input=replace(INPUT_DEFAULTS),
                   mask_start="bits_per_pixel")

    def with_precision(self, precision: str) -> "InputIBAConfig":
        """This schedule with both bottleneck stages' networks at ``precision``
        (:data:`~inputiba.precision.PRECISIONS`; the GAN stage stays in float32)."""
        return replace(self, feature=replace(self.feature, precision=precision),
                       input=replace(self.input, precision=precision))

    @classmethod
    def text(cls) -> "InputIBAConfig":
        """The library's text schedule: feature beta 15; input stage 30 steps,
        lr 0.5; no blur; the default's start of the prior and no GAN stage.

        The input stage has one mask value per token, shared over the
        embedding dimension, and prices a token's information independently
        of the text's length (:data:`~inputiba.input_stage.TEXT_INPUT_DEFAULTS`:
        beta 0.13 on the sum over tokens of the capacity averaged over the
        embedding). The published input stage (a mask per token and
        dimension, beta 30 on the mean over all elements,
        :data:`~inputiba.input_stage.TEXT_INPUT_PUBLISHED`, part of
        ``published(text=True)``) keeps every token of a short text closed.
        """
        return cls(feature=IBAConfig.text(), input=replace(TEXT_INPUT_DEFAULTS))


#: The named schedules of the command-line tools and configuration files.
SCHEDULES = ("default", "published")


def schedule(name: str, text: bool = False) -> InputIBAConfig:
    """The schedule called ``name`` (:data:`SCHEDULES`), for images or ``text``."""
    if name == "default":
        return InputIBAConfig.text() if text else InputIBAConfig()
    if name == "published":
        return InputIBAConfig.published(text)
    raise ValueError(f"unknown InputIBA schedule {name!r}; known: {', '.join(SCHEDULES)}")


@dataclass
class InputIBAResult:
    """The outputs of every stage, per input.

    Attributes:
        mask: ``(B, H, W)`` the InputIBA attribution, in ``[0, 1]`` (text:
            ``(B, T)``, one score per token, 0 at padding).
        feature_map: ``(B, H, W)`` the feature stage's map, bits per pixel
            (text: ``(B, T)`` bits per token).
        gan_mask: ``(B, C, H, W)`` the GAN's ``lambda_G``, in ``[0, 1]``
            (text: ``(B, T, D)`` over the embeddings).
        targets: ``(B,)`` class explained (``None`` with a custom loss).
        feature: the feature stage's :class:`~inputiba.iba.IBAResult`.
        gan: the :class:`~inputiba.gan.GANResult` (``None`` when the
            schedule has no GAN stage).
        input: the input stage's :class:`~inputiba.iba.BottleneckFit`.
        seconds: wall-clock seconds spent in each stage (``"feature"``,
            ``"gan"``, ``"input"``), summed over the call's batches.
    """

    mask: Tensor
    feature_map: Tensor
    gan_mask: Tensor
    targets: Tensor | None
    feature: IBAResult = field(repr=False)
    gan: GANResult | None = field(repr=False)
    input: BottleneckFit = field(repr=False)
    seconds: dict = field(default_factory=dict)


class InputIBA:
    """Input-resolution attribution of an image classifier, in three stages.

    Example::

        att = InputIBA(model, layer="features.17")
        att.estimate(loader)
        mask = att.attribute(x, target=y)          # (B, H, W) in [0, 1]
        res = att.attribute(x, return_stages=True)  # every stage's output

    A text classifier (token ids ``(B, T)``, padded with the embedding's
    ``padding_idx``) is explained per token by naming its embedding layer::

        att = InputIBA(model, layer="lstm.3", input_layer="embedding")
        att.estimate(loader)                        # (ids, labels) batches
        scores = att.attribute(ids, target=y)       # (B, T) in [0, 1]

    Args:
        model: a classifier taking ``(B, C, H, W)`` images (or token ids).
        layer: the feature stage's layer (dotted name or module); ``None``
            takes the preset of the model's family (:data:`PRESETS`).
        config: an :class:`InputIBAConfig` (default: ``InputIBAConfig()``,
            :meth:`InputIBAConfig.text` for text; :meth:`InputIBAConfig.published`
            reproduces the paper's schedule).
        stats: feature statistics estimated earlier for ``layer``.
        input_layer: the embedding layer of a text classifier.
        pad_index: padding id (default: the embedding's ``padding_idx``).
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 config: InputIBAConfig | None = None, stats: FeatureStats | None = None, *,
                 input_layer: str | nn.Module | None = None, pad_index: int | None = None) -> None:
        self.adapter = adapter_for(model, input_layer, pad_index)
        text = self.adapter.kind == "tokens"
        self.config = config or (InputIBAConfig.text() if text else InputIBAConfig())
        feature_cfg = self.config.feature
        if layer is None:
            preset = preset_for(model)
            layer = preset["layer"]
            extra = {k: v for k, v in preset.items() if k != "layer"}
            feature_cfg = replace(feature_cfg, **extra)
        if self.config.max_batch is not None:  # the feature stage takes each chunk whole
            feature_cfg = replace(feature_cfg, max_batch=max(feature_cfg.max_batch or 1, self.config.max_batch))
        self.model = model
        self.feature_iba = IBA(model, layer, feature_cfg, stats=stats, input_layer=input_layer,
                               pad_index=pad_index)
        #: text: statistics of the embeddings (the input stage's noise); images: ``None``, N(0, 1)
        self.input_stats: FeatureStats | None = None
        self._row_bytes: dict[tuple, tuple[int, int, int]] = {}

    @property
    def layer_name(self) -> str:
        """Dotted name of the feature stage's layer."""
        return self.feature_iba.layer_name

    @property
    def stats(self) -> FeatureStats | None:
        """The feature statistics (``None`` before :meth:`estimate`)."""
        return self.feature_iba.stats

    def estimate(self, loader: Iterable, n_samples: int = 1000, progress: bool = False) -> FeatureStats:
        """Estimate the feature layer's statistics (InputIBA's default: 1000 samples).

        For text the embeddings' statistics are estimated too, in a second
        pass over ``loader`` (which must be re-iterable, as a DataLoader or a
        list is).
        """
        adapter = self.adapter
        if adapter.kind == "tokens" and iter(loader) is loader:
            raise ValueError("InputIBA for text reads the loader twice (features and embeddings); "
                             "pass a re-iterable loader such as a DataLoader or a list, not an iterator")
        stats = self.feature_iba.estimate(loader, n_samples, progress)
        if adapter.kind == "tokens":
            self.input_stats = estimate_stats(
                self.model, adapter.embedding, loader, n_samples, min_std=self.config.input.min_std,
                active_threshold=0.0, layer_name=adapter.embedding_name, progress=progress,
                positions=adapter.valid)
        return stats

    def save_stats(self, path: str | os.PathLike) -> None:
        """Write the statistics to ``path`` (atomically).

        Images: the feature statistics, a file :meth:`IBA.load_stats` reads
        too. Text: the feature and the embedding statistics in one file.
        """
        feature = self.feature_iba._require_stats()
        if self.input_stats is None:
            feature.save(path)
            return
        with atomic_path(path) as tmp:
            torch.save({"feature": feature.state_dict(), "input": self.input_stats.state_dict()}, tmp)

    def load_stats(self, path: str | os.PathLike) -> FeatureStats:
        """Read statistics written by :meth:`save_stats`; returns the feature statistics."""
        state = FeatureStats.read_state(path)
        if "feature" in state:
            self.feature_iba.stats = FeatureStats.from_state_dict(state["feature"], path)
            self.input_stats = FeatureStats.from_state_dict(state["input"], path)
        else:
            self.feature_iba.stats = FeatureStats.from_state_dict(state, path)
        return self.feature_iba.stats

    def _require_stats(self) -> None:
        self.feature_iba._require_stats()
        if self.adapter.kind == "tokens" and self.input_stats is None:
            raise RuntimeError("InputIBA for text needs the embeddings' statistics as well: call "
                               "estimate(loader) or load_stats(path) of a file saved by InputIBA")

    def attribute(self, inputs: Tensor, target: int | Sequence[int] | Tensor | None = None, *,
                  loss_fn: LossFn | None = None, seed: Seeds = None,
                  return_stages: bool = False, progress: bool = False,
                  log_dir: str | os.PathLike | None = None,
                  input_model: nn.Module | None = None) -> Tensor | InputIBAResult:
        """Explain each image at input resolution.

        Args:
            inputs: ``(B, C, H, W)`` images as the model takes them (text:
                ``(B, T)`` token ids).
            target: ``None`` (predicted class), an int, or one index per image.
            loss_fn: replaces the cross-entropy (see :meth:`IBA.attribute`).
            seed: seed of every random draw, for reproducible masks: an int
                (input ``i`` of the call gets ``input_seed(seed, i)``), one
                seed per input, or ``None`` (drawn from the global generator).
                Each input's stages draw from its own streams, so its masks
                do not depend on the rest of its batch or on ``max_batch``
                (:mod:`inputiba.seeding`).
            return_stages: return an :class:`InputIBAResult`.
            progress: show a progress bar over stages and batches.
            log_dir: write each stage's losses to TensorBoard there.
            input_model: run the input stage on this model instead (same
                architecture, e.g. with randomised layers), the feature and
                GAN stages on the intact one: the sanity check's variant
                that randomises only before the input stage. Left as found.

        Returns:
            ``(B, H, W)`` masks in ``[0, 1]`` (text: ``(B, T)``) on the
            model's device, or an :class:`InputIBAResult`.
        """
        self.adapter.check_inputs(inputs)
        if inputs.shape[0] == 0:
            raise ValueError("inputs hold no samples (batch size 0)")
        check_finite(inputs)
        self._require_stats()
        inputs = inputs.to(model_device(self.model))
        B = inputs.shape[0]
        seeds = input_seeds(seed, B)
        max_batch = self.config.max_batch or self.feature_iba.max_batch_for(inputs)
        chunks = batch_chunks(self.adapter, inputs, max_batch)
        bar = writer = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=3 * len(chunks), desc="InputIBA", unit="stage")
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.fspath(log_dir))
        parts = []
        second = input_model if input_model is not None else self.model
        try:
            with preserved_state(self.model), preserved_state(second), cudnn_rnn_disabled(self.model), \
                    channels_last_where_safe([self.model, second], inputs):
                inputs = conv_layout(inputs)
                self._check_memory(inputs, max(len(index) for index, _ in chunks))  # before any work
                for k, (index, length) in enumerate(chunks):
                    # images: consecutive runs, sliced (a view keeps the memory layout); texts: cut
                    x = inputs[int(index[0]):int(index[-1]) + 1] if length is None else inputs[index, :length]
                    part_target = slice_targets(target, index, B, loss_fn is not None)
                    part = self._attribute_chunk(x, part_target, loss_fn, [seeds[i] for i in index.tolist()],
                                                 bar, second)
                    if writer is not None:
                        _log_losses(writer, part, batch=k)
                    parts.append(part)
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.close()
        result = _gather(parts, chunks, B, inputs.shape[1] if self.adapter.kind == "tokens" else None)
        return result if return_stages else result.mask

    def estimated_bytes(self, inputs: Tensor, rows: int) -> int:
        """A lower bound of the peak memory of attributing ``rows`` inputs like ``inputs`` at once.

        The bottleneck stages keep ``rows * n_copies`` rows of the network's
        activations; the GAN stage ``rows * min(batch_size, max_rows // rows)``
        rows of the network up to the layer, plus per input a critic with its
        gradients and two optimiser buffers. Activations per row are measured
        once per input shape (:func:`inputiba.memory.activation_bytes`).
        """
        cfg, iba = self.config, self.feature_iba
        key = tuple(inputs.shape[1:])
        if key not in self._row_bytes:
            one = inputs[:1]
            full = activation_bytes(self.model, lambda: self.model(one))
            prefix = critic = 0
            if cfg.gan is not None:
                kept = {}
                prefix = activation_bytes(self.model, lambda: kept.setdefault(
                    "features", features_at(self.model, iba.layer, one, iba.layer_name)))
                feats = kept["features"]
                channels = self.adapter.critic_view(feats.unsqueeze(1), None).shape[2]
                with torch.device("meta"):
                    lone = BatchedCritic(1, channels, cfg.gan.critic, cfg.gan.critic_width, self.adapter.critic_dims)
                critic = 4 * sum(p.numel() for p in lone.parameters()) * feats.element_size()
            self._row_bytes[key] = (full, prefix, critic)
        full, prefix, critic = self._row_bytes[key]
        need = rows * max(cfg.feature.n_copies, cfg.input.n_copies) * full
        if cfg.gan is not None:
            per_input = max(1, min(cfg.gan.batch_size, cfg.gan.max_rows // rows))
            need = max(need, rows * per_input * prefix + rows * critic)
        return need

    def _check_memory(self, inputs: Tensor, rows: int) -> None:
        """Refuse, before any work, a call whose estimated peak memory exceeds the free memory."""
        check_fits(self.estimated_bytes(inputs, rows), inputs.device,
                   f"InputIBA on {rows} inputs of shape {tuple(inputs.shape[1:])} at once",
                   "lower InputIBAConfig.max_batch (and GANConfig.max_rows with a GAN stage) or the input size")

    def _attribute_chunk(self, x: Tensor, target, loss_fn: LossFn | None, seeds: list[int],
                         bar, input_model: nn.Module) -> InputIBAResult:
        cfg = self.config
        iba = self.feature_iba
        adapter = self.adapter
        clock = _StageClock(x.device)
        feat = iba.attribute(x, target, loss_fn=loss_fn, seed=seeds, return_result=True)
        clock.lap("feature")
        _advance(bar, "feature")

        with torch.no_grad():
            features = None if cfg.gan is None else features_at(self.model, iba.layer, x, iba.layer_name)
            point_shape = tuple(adapter.point_values(self.model, x).shape)
        start = adapter.initial_mask_logits(feat.capacity, feat.lam, point_shape, cfg.mask_start)
        if cfg.gan is None:
            gan, prior = None, torch.sigmoid(start)
        else:
            real_mask = feat.lam if cfg.gan.real_mask == "lambda" else feat.capacity
            gan = fit_gan(self.model, iba.layer, x, features, real_mask, start, cfg.gan,
                          seed=seeds, layer_name=iba.layer_name, adapter=adapter)
            prior = gan.mask
        clock.lap("gan")
        _advance(bar, "GAN")

        explained = feat.targets if loss_fn is None else target
        _, row_loss = row_loss_for(explained, None, loss_fn, x.shape[0], cfg.input.n_copies, x.device)
        input_adapter = adapter
        if input_model is not self.model and adapter.kind == "tokens":
            input_adapter = adapter_for(input_model, adapter.embedding_name, adapter.pad_index,
                                        adapter.special_ids)
        fit = fit_input_bottleneck(input_model, x, prior, row_loss, cfg.input, seed=seeds,
                                   adapter=input_adapter, stats=self.input_stats)
        clock.lap("input")
        _advance(bar, "input")
        mask = input_attribution(fit, adapter, adapter.scored(x))
        return InputIBAResult(mask, feat.saliency, prior, feat.targets, feat, gan, fit, clock.seconds)


def preset_for(model: nn.Module) -> dict:
    """The :data:`PRESETS` entry of the model's architecture family (by class name), as settings.

    Raises:
        ValueError: no preset matches; the layer must then be given.
    """
    for cls in type(model).__mro__:
        timm = cls.__module__.startswith("timm.")
        for family, preset in PRESETS.items():
            name = family[len("timm."):] if family.startswith("timm.") else family
            if (timm or not family.startswith("timm.")) and cls.__name__.startswith(name):
                return dict(preset(model) if callable(preset) else preset)
    raise ValueError(f"no preset layer for {type(model).__name__}; pass layer= (e.g. layer='features.17')")


class _StageClock:
    """Wall-clock seconds per stage; waits for the GPU before each reading."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, stage: str) -> None:
        now = self._now()
        self.seconds[stage] = now - self._last
        self._last = now


def _advance(bar, stage: str) -> None:
    if bar is not None:
        bar.set_postfix_str(stage)
        bar.update(1)


def _log_losses(writer, part: InputIBAResult, batch: int) -> None:
    """Per-stage losses (mean over the batch's inputs) as TensorBoard scalars, and each stage's map as images.

    Image maps are written as ``(B, 1, H, W)`` images in ``[0, 1]``: the masks
    as they are, the feature map (bits) divided by each input's largest value
    (the scalar ``batch<k>/feature/max_bits`` keeps that scale).
    """
    series = {"feature/loss": part.feature.losses, "input/loss": part.input.losses}
    if part.gan is not None:
        series.update({"gan/critic_loss": part.gan.critic_losses, "gan/generator_loss": part.gan.generator_losses})
    for tag, values in series.items():
        for step, value in enumerate(values.mean(dim=1).tolist()):
            writer.add_scalar(f"batch{batch}/{tag}", value, step)
    if part.mask.dim() != 3:  # text: no images
        return
    bits = part.feature_map
    top = bits.flatten(1).amax(1).clamp_min(1e-12)
    maps = {"feature/map_scaled": bits / top.view(-1, 1, 1), "prior/lambda_G": part.gan_mask.mean(dim=1),
            "input/mask": part.mask}
    for tag, images in maps.items():
        writer.add_images(f"batch{batch}/{tag}", images.detach().float().cpu().clamp(0, 1).unsqueeze(1),
                          dataformats="NCHW")
    for i, value in enumerate(top.tolist()):
        writer.add_scalar(f"batch{batch}/feature/max_bits", value, i)


def _gather(parts: list[InputIBAResult], chunks, total: int, length: int | None) -> InputIBAResult:
    """The results of :func:`~inputiba.adapters.batch_chunks`' batches, in the call's order.

    Texts cut to their length are padded back to the call's ``length`` with
    zeros in every per-position field.
    """
    if len(parts) == 1 and length in (None, parts[0].mask.shape[1]):
        return parts[0]

    def gather(values, per_position=True, batch_dim=0):
        return gather_chunks(list(values), chunks, total, length if per_position else None, batch_dim)

    def field(objects, name, **kw):
        return gather((getattr(o, name) for o in objects), **kw)

    feature = _gather_results([p.feature for p in parts], chunks, total, length)
    gan = None
    if parts[0].gan is not None:
        gans = [p.gan for p in parts]
        gan = GANResult(field(gans, "mask"), field(gans, "mean", per_position=False),
                        field(gans, "std", per_position=False),
                        field(gans, "critic_losses", per_position=False, batch_dim=1),
                        field(gans, "generator_losses", per_position=False, batch_dim=1), field(gans, "initial"))
    fits = [p.input for p in parts]
    fit = BottleneckFit(field(fits, "alpha"), field(fits, "lam"), field(fits, "capacity"),
                        field(fits, "losses", per_position=False, batch_dim=1))
    seconds = {k: sum(p.seconds[k] for p in parts) for k in parts[0].seconds}
    return InputIBAResult(field(parts, "mask"), field(parts, "feature_map"), field(parts, "gan_mask"),
                          field(parts, "targets", per_position=False), feature, gan, fit, seconds)
