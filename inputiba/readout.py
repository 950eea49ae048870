"""The readout bottleneck (IBA, Schulz et al., ICLR 2020, §3.2).

A small network, trained once over a dataset, predicts the bottleneck's mask
logits ``alpha`` from the model's own feature maps, so that an attribution
costs one forward pass instead of a per-sample optimisation.

Training, per batch (Schulz et al., 2020, §3.2, and the authors' released code):

1. a no-grad pass records the readout layers' outputs with forward hooks (and
   the bottleneck layer's features ``R`` and the logits);
2. each readout feature is divided by its estimated per-element std (no mean
   subtraction, as the paper's code), a fully-connected output ``(B, K)`` is
   broadcast over space, everything is resized bilinearly to the bottleneck's
   ``(h, w)`` and concatenated; three 1x1 convolutions give
   ``alpha = clamp(net(...), -5, 5)``;
3. a second pass runs the model with the bottleneck
   ``Z = lam * R + (1 - lam) * eps``, ``lam = blur(sigmoid(alpha))``,
   and the loss is ``CE(f(Z), t) + beta * mean_{c,h,w} KL``, each row with its
   own target ``t_b``. (The paper's public notebook indexed the logits with
   the whole batch of targets, ``logits[:, targets]``, a ``B x B`` matrix that
   mixes every target into every row; :func:`readout_loss` takes one target per
   row.) Only the readout network learns: the model stays frozen and its
   parameters get no ``.grad``.

Choices, and why:

- **The target is an input of the readout** (``target_input=True``): a one-hot
  of the class, broadcast over space, joins the readout features. The paper's
  readout cannot be told which class to explain, so ``attribute(x, target)``
  would return the same map for every target; with the target as input it
  returns the map for the class asked. ``target_input=False`` is the paper's.
- **Training targets are the labels** (``train_target="label"``, the paper's
  ``CE(y, f(Z))``). ``"predicted"`` trains on the model's own decision, the
  consistent choice when ``target_input=False``: such a readout then explains
  the predicted class, which is all it can know at attribution time.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bottleneck import capacity_to_saliency, kl_capacity, noisy_features, smooth_mask
from .estimation import FeatureStats
from .hooks import preserved_state, replaced
from .io import atomic_path, load_weights_only
from .estimation import estimate_layer_stats
from .hooks import capture, resolve_layers
from .validation import (check_finite, check_image_batch, check_model, check_settings, model_device,
                         resolve_targets, run_model, with_overrides)

__all__ = ["ReadoutConfig", "ReadoutNet", "ReadoutResult", "ReadoutBottleneck", "readout_loss"]

_FORMAT = "inputiba.readout/1"
_TRAIN_TARGETS = ("label", "predicted")


@dataclass
class ReadoutConfig:
    """Settings of the readout bottleneck; the defaults are the published ones where there are any.

    Attributes:
        beta: weight of the information term, a mean over the bottleneck's
            elements (``beta = 10`` is the paper's ``10 / k``).
        sigma: std, in feature-map elements, of the Gaussian blur of the mask.
        relu: half-Gaussian noise with zero mean at the bottleneck and noisy
            features clamped at 0 (for a layer after a ReLU).
        min_std: lower bound of every estimated std.
        active_threshold: an element is active when more than this fraction
            of the estimation samples were non-zero there.
        init_alpha: initial bias of the readout's last convolution, whose
            weights start tiny, so that ``lam ≈ sigmoid(5) ≈ 0.993`` at first.
        alpha_bound: ``alpha`` is clamped to ``[-alpha_bound, alpha_bound]``.
        target_input: give the readout the explained class as a one-hot input
            (see the module's notes; ``False`` is the paper's readout).
        train_target: ``"label"`` (the loader's targets) or ``"predicted"``
            (the model's decision on the clean input).
        seed: seed of the readout's initial weights and of the training noise.
    """

    beta: float = 10.0
    sigma: float = 1.0
    relu: bool = False
    min_std: float = 0.01
    active_threshold: float = 0.01
    init_alpha: float = 5.0
    alpha_bound: float = 5.0
    target_input: bool = True
    train_target: str = "label"
    seed: int = 0

    def __post_init__(self) -> None:
        check_settings(self, positive=("alpha_bound",), non_negative=("beta", "sigma", "min_std"))
        if self.train_target not in _TRAIN_TARGETS:
            raise ValueError(f"train_target must be one of {_TRAIN_TARGETS}, got {self.train_target!r}")


class _InwardClamp(torch.autograd.Function):
    """``x.clamp(-bound, bound)`` whose gradient also passes where it leads back inside.

    A plain clamp has zero gradient at and beyond its bound; the readout's
    logits start at the bound (bias 5, clamp 5), so they could never learn.
    """

    @staticmethod
    def forward(ctx, x: Tensor, bound: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.bound = bound
        return x.clamp(-bound, bound)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        b = ctx.bound
        # gradient descent moves x by -grad: inward above the bound when grad > 0
        passes = (x.abs() <= b) | ((x > b) & (grad > 0)) | ((x < -b) & (grad < 0))
        return grad * passes, None


class ReadoutNet(nn.Module):
    """Three 1x1 convolutions from readout features to mask logits.

    ``C_in -> C_in / 2 -> ReLU -> 2 C_out -> ReLU -> C_out`` (the widths of
    the IBA paper's code; at least 8 hidden channels). The last convolution
    starts with weights scaled by 1e-3 and bias ``init_alpha``, so the
    bottleneck starts almost open. The output is clamped to
    ``[-alpha_bound, alpha_bound]``; its gradient passes where it leads back
    inside the bound, since the logits start on it.

    Args:
        in_channels: channels of the concatenated readout features.
        out_channels: channels of the bottleneck layer.
        init_alpha: initial bias of the last convolution.
        alpha_bound: output clamp.

    Input ``(B, in_channels, h, w)``; output ``(B, out_channels, h, w)`` logits.
    """

    def __init__(self, in_channels: int, out_channels: int, init_alpha: float = 5.0,
                 alpha_bound: float = 5.0) -> None:
        super().__init__()
        hidden1, hidden2 = max(in_channels // 2, 8), max(2 * out_channels, 8)
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, hidden1, 1), nn.ReLU(),
            nn.Conv2d(hidden1, hidden2, 1), nn.ReLU(),
            nn.Conv2d(hidden2, out_channels, 1))
        self.alpha_bound = alpha_bound
        last = self.layers[-1]
        with torch.no_grad():
            last.weight.mul_(1e-3)
            last.bias.fill_(init_alpha)

    def forward(self, features: Tensor) -> Tensor:
        """``(B, C_in, h, w)`` normalised readout features to ``(B, C_out, h, w)`` logits."""
        return _InwardClamp.apply(self.layers(features), self.alpha_bound)


def readout_loss(logits: Tensor, targets: Tensor, information: Tensor, beta: float) -> Tensor:
    """Per-input loss ``CE(logits_b, targets_b) + beta * information_b``.

    Each row's cross-entropy uses that row's own target (never
    ``logits[:, targets]``, which would give a ``B x B`` matrix).

    Args:
        logits: ``(B, K)`` outputs of the model with the bottleneck.
        targets: ``(B,)`` long class indices.
        information: ``(B,)`` mean capacity per element, nats.
        beta: weight of the information term.

    Returns:
        ``(B,)`` loss.
    """
    if targets.shape != logits.shape[:1]:
        raise ValueError(f"need one target per row: logits {tuple(logits.shape)}, targets {tuple(targets.shape)}")
    return F.cross_entropy(logits, targets, reduction="none") + beta * information


@dataclass
class ReadoutResult:
    """What :meth:`ReadoutBottleneck.attribute` computed, per input.

    Attributes:
        saliency: ``(B, H, W)`` bits per pixel at input resolution.
        capacity: ``(B, C, h, w)`` information per element, nats.
        lam: ``(B, C, h, w)`` mask ``blur(sigmoid(alpha))``.
        alpha: ``(B, C, h, w)`` the readout's logits.
        targets: ``(B,)`` the classes explained.
    """

    saliency: Tensor
    capacity: Tensor
    lam: Tensor
    alpha: Tensor
    targets: Tensor


class ReadoutBottleneck:
    """A bottleneck whose mask a trained readout network predicts in one pass.

    Example::

        rb = ReadoutBottleneck(model, "features.5", ["features.5", "features.7", "classifier.3"])
        rb.estimate(loader, n_samples=1000)
        rb.fit(loader, epochs=2, lr=1e-3, checkpoint="readout.pt", log_dir="runs/readout")
        heat = rb.attribute(x, target=y)        # (B, H, W), bits per pixel
        rb2 = ReadoutBottleneck.load(model, "readout.pt")

    The model is never changed: eval mode and frozen parameters while a
    method runs, hooks removed afterwards, no parameter ``.grad`` written.

    Args:
        model: an image classifier ``(B, C, H, W) -> (B, K)``.
        layer: the bottleneck's layer (dotted name or module); ``(C, h, w)`` maps.
        readout_layers: layers whose outputs feed the readout, ``(C, h', w')``
            maps or ``(K,)`` vectors (the logits layer, say). The paper puts the
            bottleneck at the first of them.
        config: a :class:`ReadoutConfig`; keyword arguments override its fields.
    """

    def __init__(self, model: nn.Module, layer: str | nn.Module, readout_layers: Sequence[str | nn.Module],
                 config: ReadoutConfig | None = None, **overrides) -> None:
        check_model(model)
        self.config = with_overrides(config or ReadoutConfig(), overrides, "readout")
        self.model = model
        (self.layer_name, self.layer), = resolve_layers(model, [layer]).items()
        self.readout = resolve_layers(model, readout_layers)
        self._hooked = {self.layer_name: self.layer, **self.readout}
        self.stats: dict[str, FeatureStats] | None = None
        self.n_classes: int | None = None
        self.net: ReadoutNet | None = None

    @property
    def readout_layers(self) -> list[str]:
        """Dotted names of the readout layers, in order."""
        return list(self.readout)

    # ------------------------------------------------------------------ statistics
    def estimate(self, loader: Iterable, n_samples: int = 1000, progress: bool = False) -> dict[str, FeatureStats]:
        """Estimate the statistics of the bottleneck and readout layers and build the readout.

        One pass per batch for all layers. The readout network is (re)built
        from the estimated shapes, with initial weights from ``config.seed``.

        Returns:
            ``{layer: FeatureStats}``, also kept in ``self.stats``.
        """
        cfg = self.config
        first: list[Tensor] = []

        def remembered() -> Iterator:
            for batch in loader:
                if not first:
                    first.append(_split_batch(batch, "predicted")[0][:1])
                yield batch

        stats = estimate_layer_stats(self.model, self._hooked, remembered(), n_samples,
                                     relu={self.layer_name: cfg.relu}, min_std=cfg.min_std,
                                     active_threshold=cfg.active_threshold, progress=progress)
        shape = stats[self.layer_name].shape
        if len(shape) != 3:
            raise ValueError(f"the bottleneck layer {self.layer_name!r} gives features of shape {tuple(shape)}, "
                             "not (C, h, w) maps")
        for name in self.readout:
            if len(stats[name].shape) not in (1, 3):
                raise ValueError(f"readout layer {name!r} gives features of shape {tuple(stats[name].shape)}; "
                                 "a readout layer must give (C, h, w) maps or (K,) vectors")
        with torch.no_grad(), preserved_state(self.model):
            logits = run_model(self.model, first[0].to(model_device(self.model)))
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise ValueError("the readout bottleneck needs a model that returns (B, K) scores")
        self.stats, self.n_classes = stats, int(logits.shape[1])
        self.net = self._build_net()
        return stats

    def _build_net(self) -> ReadoutNet:
        cfg = self.config
        stats = self._require_stats()
        in_channels = sum(stats[name].shape[0] for name in self.readout)
        if cfg.target_input:
            in_channels += self.n_classes
        device = model_device(self.model)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)
            net = ReadoutNet(in_channels, stats[self.layer_name].shape[0], cfg.init_alpha, cfg.alpha_bound)
        return net.to(device)

    def _require_stats(self) -> dict[str, FeatureStats]:
        if self.stats is None or self.n_classes is None:
            raise RuntimeError("the readout bottleneck has no feature statistics: call estimate(loader) "
                               "or ReadoutBottleneck.load(model, path) first")
        return self.stats

    # ------------------------------------------------------------------ the readout
    def _alpha(self, captured: dict[str, Tensor], targets: Tensor) -> Tensor:
        """``(B, C, h, w)`` mask logits from the captured readout features."""
        stats = self.stats
        h, w = stats[self.layer_name].shape[-2:]
        parts = []
        for name in self.readout:
            f = captured[name]
            f = f / stats[name].std.to(f.device, f.dtype)
            if f.dim() == 2:
                f = f[:, :, None, None].expand(-1, -1, h, w)
            elif f.shape[-2:] != (h, w):
                f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
            parts.append(f)
        if self.config.target_input:
            one_hot = F.one_hot(targets, self.n_classes).to(parts[0].dtype)
            parts.append(one_hot[:, :, None, None].expand(-1, -1, h, w))
        return self.net(torch.cat(parts, dim=1))

    def _capacity(self, lam: Tensor, features: Tensor) -> Tensor:
        st = self.stats[self.layer_name].to(features.device, features.dtype)
        return kl_capacity(lam, (features - st.mean) / st.std, st.active)

    def _mask(self, alpha: Tensor) -> Tensor:
        return smooth_mask(torch.sigmoid(alpha), self.config.sigma)

    def _clean_pass(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        with torch.no_grad():
            captured, logits = capture(self.model, self._hooked, x, run_to_end=True)
        shape = self.stats[self.layer_name].shape
        if captured[self.layer_name].shape[1:] != shape:
            raise ValueError(
                f"layer {self.layer_name!r} gives features of shape {tuple(captured[self.layer_name].shape[1:])} "
                f"for inputs of shape {tuple(x.shape[1:])}, but the statistics were estimated for {tuple(shape)}")
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise ValueError("the readout bottleneck needs a model that returns (B, K) scores")
        return captured, logits

    # ------------------------------------------------------------------ training
    def fit(self, loader: Iterable, epochs: int = 20, lr: float = 1e-5, *,
            checkpoint: str | os.PathLike | None = None, resume: bool = True,
            log_dir: str | os.PathLike | None = None, progress: bool = False) -> list[float]:
        """Train the readout network over a dataset (Adam; the paper: 20 epochs, lr 1e-5, batch 32).

        After every epoch the whole state (readout weights, optimiser,
        noise generator, epoch, loss history, statistics, settings) is written
        to ``checkpoint`` atomically; a later call with ``resume=True`` goes on
        after the last finished epoch, with the checkpoint's statistics,
        settings and weights in place of the current ones (``lr`` is the
        call's). The file is also what :meth:`load` reads.
        A loader whose sampler has ``set_epoch(epoch)`` (as
        ``DistributedSampler``) gets it called before each epoch, so that a
        resumed run sees the same order as an uninterrupted one.

        Args:
            loader: yields ``(inputs, labels)`` batches (inputs alone suffice
                with ``train_target="predicted"``).
            epochs: total epochs, counting those of a resumed checkpoint.
            lr: Adam learning rate.
            checkpoint: file for the per-epoch checkpoint.
            resume: continue from ``checkpoint`` if it exists.
            log_dir: write the losses to TensorBoard there.
            progress: show a progress bar per epoch.

        Returns:
            The mean training loss of every epoch so far.
        """
        if epochs < 1 or lr <= 0:
            raise ValueError(f"epochs and lr must be positive, got epochs={epochs}, lr={lr}")
        state = None
        if checkpoint is not None and resume and os.path.isfile(checkpoint):
            state = _read(checkpoint)
            if "training" not in state:
                raise ValueError(f"{checkpoint} holds a trained readout but no training state to resume from")
            self._set_state(state)
        self._require_stats()
        net = self.net
        device = model_device(self.model)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        generator = torch.Generator(device=device).manual_seed(self.config.seed)
        history: list[float] = []
        if state is not None:
            training = state["training"]
            optimizer.load_state_dict(training["optimizer"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            generator.set_state(training["generator"])
            history = [float(v) for v in training["history"]]
        writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.fspath(log_dir))
        step = sum(int(n) for n in state["training"]["batches"]) if state is not None else 0
        batches = list(state["training"]["batches"]) if state is not None else []
        try:
            with preserved_state(self.model):
                for epoch in range(len(history), epochs):
                    sampler = getattr(loader, "sampler", None)
                    if hasattr(sampler, "set_epoch"):
                        sampler.set_epoch(epoch)
                    total, count, n_batches = 0.0, 0, 0
                    for batch in _bar(loader, progress, f"readout epoch {epoch + 1}/{epochs}"):
                        loss, ce, info = self._train_step(batch, optimizer, generator)
                        total += float(loss.sum())
                        count += loss.shape[0]
                        n_batches += 1
                        step += 1
                        if writer is not None:
                            writer.add_scalar("readout/loss", float(loss.mean()), step)
                            writer.add_scalar("readout/cross_entropy", float(ce.mean()), step)
                            writer.add_scalar("readout/information_nats_per_element", float(info.mean()), step)
                    if count == 0:
                        raise ValueError("the loader yielded no batches to train the readout on")
                    history.append(total / count)
                    batches.append(n_batches)
                    if writer is not None:
                        writer.add_scalar("readout/epoch_loss", history[-1], epoch + 1)
                    if checkpoint is not None:
                        training = {"epoch": epoch + 1, "history": list(history), "batches": list(batches),
                                    "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
                        self._write(checkpoint, training)
        finally:
            if writer is not None:
                writer.close()
        return history

    def _train_step(self, batch, optimizer: torch.optim.Optimizer,
                    generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.config
        x, labels = _split_batch(batch, cfg.train_target)
        if not x.is_floating_point() or x.dim() != 4:
            raise ValueError(f"the readout trains on float image batches (B, C, H, W); got {tuple(x.shape)}")
        check_finite(x, "training inputs")
        device = model_device(self.model)
        x = x.to(device)
        captured, logits = self._clean_pass(x)
        wanted = logits.argmax(dim=1) if cfg.train_target == "predicted" else labels
        targets = resolve_targets(wanted, logits, x.shape[0], device)
        self.net.train()
        lam = self._mask(self._alpha(captured, targets))
        features = captured[self.layer_name]
        info = self._capacity(lam, features).flatten(1).mean(1)
        st = self.stats[self.layer_name].to(device, features.dtype)
        noise = torch.randn(features.shape, generator=generator, device=device, dtype=features.dtype)

        def bottleneck(original: Tensor) -> Tensor:
            z = noisy_features(original, lam, st.mean, st.std, noise) * st.active
            return z.clamp_min(0) if st.relu else z

        with replaced(self.layer, "output", bottleneck):
            out = run_model(self.model, x)
        loss = readout_loss(out, targets, info, cfg.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.mean().backward()
        optimizer.step()
        loss, info = loss.detach(), info.detach()
        return loss, loss - cfg.beta * info, info

    # ------------------------------------------------------------------ attribution
    def attribute(self, inputs: Tensor, target: int | Sequence[int] | Tensor | None = None, *,
                  return_result: bool = False) -> Tensor | ReadoutResult:
        """Explain inputs with one forward pass of the model and the readout.

        Args:
            inputs: ``(B, C, H, W)`` float images.
            target: ``None`` (the predicted class), an int, or one index per
                input. Without ``target_input`` the readout cannot be told the
                class: the map is then the same for every target.
            return_result: return a :class:`ReadoutResult`.

        Returns:
            ``(B, H, W)`` float tensor, bits per pixel, on the model's device;
            or a :class:`ReadoutResult`.
        """
        self._require_stats()
        if self.net is None:
            raise RuntimeError("the readout bottleneck has no readout network: call estimate(loader) first")
        check_image_batch(inputs, "the readout bottleneck")
        x = inputs.to(model_device(self.model))
        with torch.no_grad(), preserved_state(self.model), _eval(self.net):
            captured, logits = self._clean_pass(x)
            targets = resolve_targets(target, logits, x.shape[0], x.device)
            alpha = self._alpha(captured, targets)
            lam = self._mask(alpha)
            capacity = self._capacity(lam, captured[self.layer_name])
        saliency = capacity_to_saliency(capacity, tuple(x.shape[-2:]))
        if return_result:
            return ReadoutResult(saliency, capacity, lam, alpha, targets)
        return saliency

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Write the trained readout, its statistics and settings to ``path`` atomically.

        Only tensors, strings and numbers: the file loads with ``weights_only=True``.
        """
        self._write(path, None)

    def _write(self, path: str | os.PathLike, training: dict | None) -> None:
        stats = self._require_stats()
        state = {"format": _FORMAT, "layer": self.layer_name, "readout_layers": self.readout_layers,
                 "config": asdict(self.config), "n_classes": self.n_classes,
                 "stats": {name: st.state_dict() for name, st in stats.items()},
                 "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()}}
        if training is not None:
            state["training"] = training
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    @classmethod
    def load(cls, model: nn.Module, path: str | os.PathLike) -> "ReadoutBottleneck":
        """A readout bottleneck for ``model`` from a file of :meth:`save` or a :meth:`fit` checkpoint.

        Raises:
            ValueError: the file is not a readout file, or ``model`` lacks its layers.
        """
        state = _read(path)
        rb = cls(model, state["layer"], state["readout_layers"], ReadoutConfig(**state["config"]))
        rb._set_state(state)
        return rb

    def _set_state(self, state: dict) -> None:
        if state["layer"] != self.layer_name or list(state["readout_layers"]) != self.readout_layers:
            raise ValueError(
                f"the file is for bottleneck {state['layer']!r} with readout layers {state['readout_layers']}, "
                f"not {self.layer_name!r} with {self.readout_layers}")
        self.config = ReadoutConfig(**state["config"])
        self.stats = {name: FeatureStats.from_state_dict(s) for name, s in state["stats"].items()}
        self.n_classes = int(state["n_classes"])
        self.net = self._build_net()
        self.net.load_state_dict(state["net"])


def _read(path: str | os.PathLike) -> dict:
    return load_weights_only(path, "a readout bottleneck", "a readout-bottleneck", _FORMAT)


def _split_batch(batch, train_target: str) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        if train_target == "label":
            raise ValueError("train_target='label' needs (inputs, labels) batches; the loader yields inputs only "
                             "(use train_target='predicted')")
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[0], Tensor):
        return batch[0], batch[1]
    raise TypeError(f"a loader must yield (inputs, labels) pairs or input tensors, got {type(batch).__name__}")


def _bar(loader: Iterable, progress: bool, desc: str) -> Iterable:
    if not progress:
        return loader
    from tqdm.auto import tqdm
    return tqdm(loader, desc=desc, unit="batch")


@contextlib.contextmanager
def _eval(module: nn.Module) -> Iterator[None]:
    mode = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(mode)
