"""InputIBA's second stage: a WGAN that finds an input mask matching the feature bottleneck.

The library's default schedule skips this stage (``InputIBAConfig.gan=None``):
measured on the cluttered benchmark, a GAN at the published learning rates
barely moves its starting mask and changes no score, and one that learns
(higher learning rates) moves it away from its start and scores worse
(``benchmarks/RESULTS.md``). ``InputIBAConfig.published()`` runs it.

For each input ``x`` the generator has no network, only parameters: mask
logits ``M`` (input-shaped), and a noise mean ``mu_G`` and std ``sigma_G`` per
input channel. It produces ``f_l(x_G)``, the features at layer ``l`` of

    x_G = sigmoid(M) * x + (1 - sigmoid(M)) * (sigma_G * u + mu_G),  u ~ N(0, I)

running the network only up to ``l``. For text the same happens on the
embedding layer's output instead of the pixels (:mod:`inputiba.adapters`). The critic tells these from "real"
samples of the feature bottleneck, ``K * R + (1 - K) * n`` with ``n ~ N(m, s^2)``,
``m ~ U(-2, 2)``, ``s ~ U(0, 5)``. The result is ``lambda_G = sigmoid(M)``.

Every input of a batch has its own generator parameters and its own critic.
The critics are one network of grouped convolutions (one group per input), so
all of them run in one call; the losses are sums of per-input terms and the
optimisers work per element, so the inputs do not influence each other.

Choices, relative to the InputIBA authors' code (Zhang et al., NeurIPS 2021):

- ``K`` is the feature stage's ``lambda = sigmoid(alpha)`` by default, the
  mask the bottleneck applied; the original used the capacity (nats, not in
  ``[0, 1]``), available as ``real_mask="capacity"``.
- The real samples are drawn afresh at each step, ``(m, s)`` per sample,
  rather than from a fixed set of 200 in 10 sub-sets of 20: the same
  distribution over ``(m, s)``, without holding 200 feature maps per input.
- ``M`` starts where the caller says (:func:`inputiba.adapters.mask_start_logits`;
  the pipeline's ``InputIBAConfig.mask_start``); the original used the
  feature map in bits per pixel as logits (``"bits_per_pixel"``).
- Real and fake samples are scored in one critic call. The original scored
  them in separate calls, so its BatchNorm normalised each batch to the same
  statistics and the critic could not tell them apart (its loss stays at 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .adapters import Adapter, ImageAdapter
from .seeding import InputStreams, Seeds, input_seeds
from .validation import check_settings

__all__ = ["GANConfig", "GANResult", "BatchedCritic", "fit_gan"]


@dataclass
class GANConfig:
    """Settings of the GAN stage; the defaults are the published ones.

    Attributes:
        n_samples: real samples per input and epoch.
        epochs: passes over ``n_samples``.
        batch_size: samples per input in each step.
        critic_steps: critic updates per generator update.
        lr_mask, lr_mean, lr_std: RMSprop learning rates of ``M``, ``mu_G``
            and ``sigma_G`` (the original's generator optimiser).
        critic: ``"gp"``, a small critic with gradient penalty (Adam), or
            ``"clip"``, the original critic (BatchNorm, weight clipping,
            RMSprop). ``"gp"`` is the default because it measured no worse on
            insertion/deletion and faster (``benchmarks/RESULTS.md``).
        critic_width: channels of the ``"gp"`` critic.
        lr_critic: critic learning rate; ``None`` takes 5e-5 for ``"clip"``
            and 1e-4 for ``"gp"``.
        clip: weight-clipping bound of the ``"clip"`` critic.
        gp_weight: weight of the gradient penalty of the ``"gp"`` critic.
        real_mask: ``"lambda"`` (the feature mask) or ``"capacity"`` (the
            original's choice) as ``K`` in the real samples.
        noise_mean_range: ``m ~ U(-range, range)`` of the real samples' noise.
        noise_std_max: ``s ~ U(0, max)`` of the real samples' noise.
        max_rows: fake samples (over all inputs of the batch) run through the
            network at once. The stage's peak memory is about ``max_rows``
            times the activations of the network up to the layer, with their
            gradients, whatever the batch size and ``batch_size``: the
            generator's gradient is taken at the features once and carried
            back through the network chunk by chunk (exact; the fakes' network
            pass is run once more). At least one sample per input runs at once.
    """

    n_samples: int = 200
    epochs: int = 20
    batch_size: int = 32
    critic_steps: int = 5
    lr_mask: float = 0.003
    lr_mean: float = 0.1
    lr_std: float = 0.05
    critic: str = "gp"
    critic_width: int = 64
    lr_critic: float | None = None
    clip: float = 0.01
    gp_weight: float = 10.0
    real_mask: str = "lambda"
    noise_mean_range: float = 2.0
    noise_std_max: float = 5.0
    max_rows: int = 64

    def __post_init__(self) -> None:
        if self.critic not in ("clip", "gp"):
            raise ValueError(f"critic must be 'clip' or 'gp', got {self.critic!r}")
        if self.real_mask not in ("lambda", "capacity"):
            raise ValueError(f"real_mask must be 'lambda' or 'capacity', got {self.real_mask!r}")
        check_settings(self, positive=("n_samples", "epochs", "batch_size", "critic_steps", "critic_width",
                                       "lr_mask", "clip", "max_rows"),
                       non_negative=("lr_mean", "lr_std", "gp_weight", "noise_mean_range", "noise_std_max"))

    @property
    def critic_lr(self) -> float:
        """The critic's learning rate, with the per-critic default filled in."""
        if self.lr_critic is not None:
            return self.lr_critic
        return 5e-5 if self.critic == "clip" else 1e-4


@dataclass
class GANResult:
    """What the GAN stage learned, per input.

    Attributes:
        mask: ``(B, C, H, W)`` ``lambda_G = sigmoid(M)``, in ``[0, 1]``
            (text: ``(B, T, D)`` over the embeddings).
        mean: ``(B, C, 1, 1)`` learned noise mean ``mu_G`` (text: ``(B, 1, D)``).
        std: ``(B, C, 1, 1)`` learned noise std ``sigma_G`` (text: ``(B, 1, D)``).
        critic_losses: ``(critic updates, B)`` Wasserstein critic loss.
        generator_losses: ``(generator updates, B)`` generator loss.
        initial: ``lambda_G`` before the first step, shaped like ``mask``;
            ``(mask - initial).abs().mean()`` is how far the GAN moved it.
    """

    mask: Tensor
    mean: Tensor
    std: Tensor
    critic_losses: Tensor = field(repr=False)
    generator_losses: Tensor = field(repr=False)
    initial: Tensor = field(repr=False)


class BatchedCritic(nn.Module):
    """``n_critics`` independent critics of ``(C, h, w)`` feature maps in one module.

    Input ``(B, n, C, h, w)``: ``n`` samples for each of ``B = n_critics``
    inputs; output ``(B, n)`` scores, sample ``[b, j]`` scored by critic ``b``.
    With ``dims=1`` the same design reads ``(B, n, C, T)`` sequences (the
    original's text critic was an LSTM; a convolution over time is batched
    as easily as the image critic and needs no recurrence).

    Args:
        n_critics: number of independent critics (inputs in the batch).
        channels: ``C`` of the feature maps.
        kind: ``"clip"``: the original design, three stride-2 3x3
            convolutions ``C -> 2C -> 4C -> C`` with BatchNorm and LeakyReLU,
            global average pooling, then ``C -> 256 -> 1`` (33M parameters
            for ``C = 512``); ``"gp"``: two stride-2 3x3 convolutions of
            ``width`` channels with LeakyReLU, global average pooling, then
            ``width -> 1``, no normalisation (as WGAN-GP needs; 0.3M
            parameters for ``C = 512``). Stride 2 with padding 1 works for
            feature maps of any size.
        width: channels of the ``"gp"`` critic.
        dims: spatial dimensions of the samples: 2 (feature maps) or 1 (sequences).
    """

    def __init__(self, n_critics: int, channels: int, kind: str = "gp", width: int = 64,
                 dims: int = 2) -> None:
        super().__init__()
        if dims not in (1, 2):
            raise ValueError(f"dims must be 1 or 2, got {dims}")
        self.n_critics = n_critics
        self.dims = dims
        g, c = n_critics, channels
        Conv = nn.Conv2d if dims == 2 else nn.Conv1d
        Norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d

        def conv(cin, cout, k=3, stride=1):
            return Conv(g * cin, g * cout, k, stride=stride, padding=k // 2, groups=g)

        act = nn.LeakyReLU(0.2)
        if kind == "clip":
            self.body = nn.Sequential(
                conv(c, 2 * c, stride=2), Norm(g * 2 * c), act,
                conv(2 * c, 4 * c, stride=2), Norm(g * 4 * c), act,
                conv(4 * c, c, stride=2), Norm(g * c), act)
            self.head = nn.Sequential(conv(c, 256, k=1), act, conv(256, 1, k=1))
        elif kind == "gp":
            self.body = nn.Sequential(conv(c, width, stride=2), act, conv(width, width, stride=2), act)
            self.head = conv(width, 1, k=1)
        else:
            raise ValueError(f"kind must be 'clip' or 'gp', got {kind!r}")

    @classmethod
    def seeded(cls, seeds: list[int], channels: int, kind: str = "gp", width: int = 64,
               dims: int = 2) -> "BatchedCritic":
        """``len(seeds)`` critics, critic ``b`` initialised as a lone critic under ``seeds[b]``.

        Critic ``b``'s initial weights then depend on its seed only, not on
        how many critics share the module or where ``b`` sits among them.
        The caller's global random state is left as it was.
        """
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            critic = cls(len(seeds), channels, kind, width, dims)
            state = critic.state_dict()
            for b, seed in enumerate(seeds):
                torch.manual_seed(seed)
                for name, value in cls(1, channels, kind, width, dims).state_dict().items():
                    if value.dim() > 0:  # grouped weights, biases, norms: critic b owns rows b*n .. (b+1)*n
                        n = value.shape[0]
                        state[name][b * n:(b + 1) * n].copy_(value)
        return critic

    def forward(self, features: Tensor) -> Tensor:
        """``(B, n, C, *S)`` samples to ``(B, n)`` scores."""
        B, n = features.shape[:2]
        if B != self.n_critics:
            raise ValueError(f"got samples for {B} inputs, but there are {self.n_critics} critics")
        x = features.transpose(0, 1).reshape(n, -1, *features.shape[3:])
        spatial = tuple(range(2, 2 + self.dims))
        x = self.body(x).mean(dim=spatial, keepdim=True)
        return self.head(x).view(n, B).t()


@torch.enable_grad()  # also when called under no_grad (Captum's metrics do)
def fit_gan(model: nn.Module, layer: nn.Module, inputs: Tensor, features: Tensor,
            feature_mask: Tensor, initial_logits: Tensor, config: GANConfig | None = None,
            seed: Seeds = None, layer_name: str = "layer",
            adapter: Adapter | None = None) -> GANResult:
    """Train one generator and critic per input; return the input masks ``lambda_G``.

    Args:
        model: the classifier, in eval mode with frozen parameters.
        layer: the feature stage's layer; the network runs only up to it.
        inputs: ``(B, C, H, W)`` inputs (text: ``(B, T)`` token ids).
        features: ``(B, C_f, h, w)`` clean features ``R`` at ``layer``
            (text: ``(B, T, H)``).
        feature_mask: ``K`` of the real samples, shaped like ``features``
            (the feature stage's ``lambda`` or capacity, see
            ``config.real_mask``).
        initial_logits: starting mask logits shaped like the input point,
            ``(B, C, H, W)`` (text: ``(B, T, D)``); see
            :func:`inputiba.adapters.mask_start_logits`.
        config: a :class:`GANConfig`.
        seed: seed of all random draws of the stage, one per input or a
            base seed (:func:`inputiba.seeding.input_seeds`): input ``b``'s
            samples and its critic's initial weights come from its own
            stream, so its mask does not depend on the other inputs.
        layer_name: for error messages.
        adapter: images (default) or tokens (:mod:`inputiba.adapters`).

    Returns:
        A :class:`GANResult`.
    """
    cfg = config or GANConfig()
    adapter = adapter or ImageAdapter()
    points = adapter.point_values(model, inputs).detach()
    valid = adapter.valid(inputs)
    B = points.shape[0]
    device, dtype = points.device, points.dtype
    streams = InputStreams(input_seeds(seed, B), device, "gan")

    logits = initial_logits.detach().clone().requires_grad_(True)
    noise_shape = adapter.noise_shape(points)
    mu = torch.zeros(noise_shape, device=device, dtype=dtype, requires_grad=True)
    sigma = torch.ones(noise_shape, device=device, dtype=dtype, requires_grad=True)
    gen_params = [logits, mu, sigma]
    opt_g = torch.optim.RMSprop([{"params": [logits], "lr": cfg.lr_mask},
                                 {"params": [mu], "lr": cfg.lr_mean},
                                 {"params": [sigma], "lr": cfg.lr_std}])
    channels = adapter.critic_view(features.unsqueeze(1), None).shape[2]
    critic = BatchedCritic.seeded([streams.seed_of(b) for b in range(B)], channels, cfg.critic,
                                  cfg.critic_width, dims=adapter.critic_dims).to(device, dtype)
    critic.train()
    if cfg.critic == "clip":
        opt_d = torch.optim.RMSprop(critic.parameters(), lr=cfg.critic_lr)
    else:
        opt_d = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, betas=(0.5, 0.9))

    seq = 1 if adapter.kind == "tokens" else 0  # text: positions outermost, padding changes no draw

    def randn(*shape):  # (B, *shape), input b's row from its own stream
        return streams.randn(*shape, dtype=dtype, first=seq)

    def rand(*shape):
        return streams.rand(*shape, dtype=dtype)

    def real_samples(n: int) -> Tensor:
        ones = (1,) * (features.dim() - 1)
        m = (2 * rand(n, *ones) - 1) * cfg.noise_mean_range
        s = rand(n, *ones) * cfg.noise_std_max
        noise = m + s * randn(n, *features.shape[1:])
        K = feature_mask.unsqueeze(1)
        return adapter.critic_view(K * features.unsqueeze(1) + (1 - K) * noise, valid)

    per_chunk = max(1, cfg.max_rows // B)  # samples per input in one pass of the network

    def fake_points(n: int) -> Tensor:
        """``(B, n, *point)`` generator samples, with the graph to ``logits``, ``mu``, ``sigma``."""
        mask = torch.sigmoid(logits).unsqueeze(1)
        noise = sigma.unsqueeze(1) * randn(n, *points.shape[1:]) + mu.unsqueeze(1)
        return mask * points.unsqueeze(1) + (1 - mask) * noise

    def to_layer(x_g: Tensor) -> Tensor:
        """Features of ``(B, k, *point)`` samples, ``(B, k, *feature)``."""
        out = adapter.run_to_layer(model, layer, inputs, x_g.flatten(0, 1), layer_name)
        return out.view(B, x_g.shape[1], *out.shape[1:])

    def fake_features(x_g: Tensor) -> Tensor:
        """Features of the samples, ``per_chunk`` samples per input at a time, without graph."""
        with torch.no_grad():
            return torch.cat([to_layer(x_g[:, j:j + per_chunk]) for j in range(0, x_g.shape[1], per_chunk)], 1)

    def generator_step(n: int, real: Tensor) -> Tensor:
        """One generator update; the critic's gradient carried back through the network in chunks."""
        x_g = fake_points(n)
        feats = fake_features(x_g.detach()).requires_grad_(True)
        loss_g = -_scores(critic, adapter.critic_view(feats, valid), real)[0].mean(1)
        (grad_feats,) = torch.autograd.grad(loss_g.sum(), feats)
        for p in gen_params:
            p.grad = None
        chunks = range(0, n, per_chunk)
        for k, j in enumerate(chunks):
            torch.autograd.backward(to_layer(x_g[:, j:j + per_chunk]), grad_feats[:, j:j + per_chunk],
                                    retain_graph=k < len(chunks) - 1, inputs=gen_params)
        opt_g.step()
        return loss_g.detach()

    steps_per_epoch = math.ceil(cfg.n_samples / cfg.batch_size)
    critic_losses, generator_losses = [], []
    for _ in range(cfg.epochs):
        for i in range(steps_per_epoch):
            n = min(cfg.batch_size, cfg.n_samples - i * cfg.batch_size)
            real = real_samples(n)
            with torch.no_grad():
                fake = adapter.critic_view(fake_features(fake_points(n)), valid)
            fake_score, real_score = _scores(critic, fake, real)
            loss_d = fake_score.mean(1) - real_score.mean(1)
            if cfg.critic == "gp":
                loss_d = loss_d + cfg.gp_weight * _gradient_penalty(critic, real, fake, rand)
            opt_d.zero_grad(set_to_none=True)
            loss_d.sum().backward()
            opt_d.step()
            if cfg.critic == "clip":
                with torch.no_grad():
                    for p in critic.parameters():
                        p.clamp_(-cfg.clip, cfg.clip)
            critic_losses.append(loss_d.detach())

            if i % cfg.critic_steps == 0:
                generator_losses.append(generator_step(n, real))

    return GANResult(torch.sigmoid(logits).detach(), mu.detach(), sigma.detach(),
                     torch.stack(critic_losses), torch.stack(generator_losses), torch.sigmoid(initial_logits))


def _scores(critic: BatchedCritic, fake: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """Critic scores of fake and real samples, computed in one call.

    One call matters for the BatchNorm critic: scored separately, each batch
    would be normalised to the same statistics, which hides from the critic
    the very differences between real and fake it has to find.
    """
    n = fake.shape[1]
    scores = critic(torch.cat([fake, real], dim=1))
    return scores[:, :n], scores[:, n:]


def _gradient_penalty(critic: BatchedCritic, real: Tensor, fake: Tensor, rand) -> Tensor:
    """``(B,)`` WGAN-GP penalty, ``E[(||grad D(x_hat)|| - 1)^2]`` per critic.

    ``rand(*shape)`` draws ``(B, *shape)`` uniforms, one row per input.
    """
    eps = rand(real.shape[1], *([1] * (real.dim() - 2)))
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(2).norm(dim=2) - 1) ** 2).mean(1)
