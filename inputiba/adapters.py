"""How images and token sequences differ, in one small object each.

The stages (feature bottleneck, GAN, input bottleneck) are written once. What
depends on the kind of input lives here:

- where the *input point* is: the pixels, which the model takes directly, or
  the output of an embedding layer (``(B, T, D)``) for token ids ``(B, T)``;
- which positions are real: every pixel, or the tokens that are not padding;
- how a feature map is laid out (``(C, h, w)`` or ``(T, H)`` channel-last) and
  therefore how statistics are pooled, how a mask starts and what the GAN's
  critic convolves over;
- how per-element values become one score per pixel or per token.

:class:`ImageAdapter` and :class:`TokenAdapter` are the two; :func:`adapter_for`
picks one from an optional embedding layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bottleneck import capacity_to_saliency, smooth_mask
from .hooks import features_at, replaced, resolve_layer

__all__ = ["MASK_STARTS", "mask_start_logits", "TokenGrid", "ImageAdapter", "TokenAdapter", "Adapter", "adapter_for",
           "expand_valid"]

LN2 = math.log(2.0)

#: The starting points of InputIBA's input mask prior ``lambda_G`` (see :func:`mask_start_logits`).
MASK_STARTS = ("bits", "bits_per_pixel", "saturating", "normalized", "lambda")


def mask_start_logits(cells: Tensor, start: str, pixels_per_cell: float = 1.0) -> Tensor:
    """Logits of ``lambda_G``'s starting point from the feature map, element-wise.

    ``cells`` holds, per input element, the feature stage's information of
    the feature cell it lies in (the capacity summed over channels, bits;
    bilinearly interpolated between cells), or for ``"lambda"`` the
    channel-mean of the feature mask. The choices:

    - ``"bits"``: the bits themselves as logits, ``sigmoid(b)``: 0.5 where
      the features carry nothing, 0.73 at 1 bit, 0.95 at 3.
    - ``"bits_per_pixel"``: the original code's, the bits spread over the
      ``pixels_per_cell`` input elements of a cell, as logits. At 1/8 of the
      input resolution a cell's bits are divided by 64, so the start is close
      to 0.5 everywhere.
    - ``"saturating"``: ``1 - 2^-b``: 0 where the features carry nothing,
      0.5 at one bit, 0.875 at three.
    - ``"normalized"``: ``b / max(b)`` per input.
    - ``"lambda"``: ``logit`` of the channel-mean of the feature mask.

    Probabilities are clamped to ``[0.01, 0.99]`` before the logit, so the
    GAN can still move them.

    Args:
        cells: ``(B, ...)`` bits (or mask values for ``"lambda"``).
        start: one of :data:`MASK_STARTS`.
        pixels_per_cell: input elements per feature cell (``"bits_per_pixel"``).

    Returns:
        Logits shaped like ``cells``.
    """
    if start == "bits":
        return cells.clone()
    if start == "bits_per_pixel":
        return cells / pixels_per_cell
    if start == "saturating":
        prob = 1.0 - torch.exp2(-cells.clamp_min(0))
    elif start == "normalized":
        peak = cells.flatten(1).amax(dim=1).clamp_min(1e-12)
        prob = cells / peak.view(-1, *([1] * (cells.dim() - 1)))
    elif start == "lambda":
        prob = cells
    else:
        raise ValueError(f"unknown mask start {start!r}; known: {', '.join(MASK_STARTS)}")
    return torch.logit(prob.clamp(0.01, 0.99))


@dataclass(frozen=True)
class TokenGrid:
    """How a vision transformer's hidden tokens ``(B, P + h * w, D)`` lie on the image.

    The first ``prefix`` tokens (a ViT's class token, DeiT's distillation
    token, register tokens) belong to no place; the others are the patches in
    row-major order on an ``(h, w)`` grid. The bottleneck keeps the tokens as
    they are, with per-element statistics like any feature map (position ``t``
    is the same patch in every image) and a mask value per element, the prefix
    tokens included: attention has gathered information from every patch into
    them, and a class token that passed clean would carry all of it around the
    bottleneck. For what needs a map (the blur of the mask, the saliency in
    bits per pixel, InputIBA's prior) the patch tokens are viewed as a
    ``(D, h, w)`` feature map; the prefix tokens' bits are reported apart
    (:meth:`prefix_bits`).

    Attributes:
        prefix: tokens before the patches.
        grid: ``(h, w)`` patches.
    """

    prefix: int
    grid: tuple[int, int]

    @classmethod
    def of(cls, model: nn.Module) -> "TokenGrid | None":
        """The grid of a ``timm`` vision transformer (``patch_embed.grid_size``, ``num_prefix_tokens``), else ``None``."""
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        if grid is None or not hasattr(model, "num_prefix_tokens"):
            return None
        return cls(int(model.num_prefix_tokens), (int(grid[0]), int(grid[1])))

    def prefix_of(self, tokens: int) -> int | None:
        """Prefix tokens of a sequence of ``tokens`` (the patch embedding has none); ``None``: not this grid."""
        patches = self.grid[0] * self.grid[1]
        return {patches + self.prefix: self.prefix, patches: 0}.get(tokens)

    def fits(self, x: Tensor) -> bool:
        """Whether ``x`` ``(B, T, D)`` is a token sequence of this grid."""
        return x.dim() == 3 and self.prefix_of(x.shape[1]) is not None

    def to_map(self, x: Tensor) -> Tensor:
        """``(B, T, D)`` tokens -> ``(B, D, h, w)``: the patch tokens as a feature map."""
        p = self.prefix_of(x.shape[1])
        return x[:, p:].transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid)

    def from_map(self, prefix: Tensor, grid_map: Tensor) -> Tensor:
        """Inverse of :meth:`to_map`: ``(B, P, D)`` prefix tokens and a ``(B, D, h, w)`` map -> ``(B, T, D)``."""
        return torch.cat([prefix, grid_map.flatten(2).transpose(1, 2)], dim=1)

    def prefix_bits(self, capacity: Tensor) -> Tensor:
        """``(B, P)`` bits at each prefix token (the capacity summed over its channels)."""
        p = self.prefix_of(capacity.shape[1])
        return capacity[:, :p].sum(dim=2) / LN2

    def smooth(self, lam: Tensor, sigma: float) -> Tensor:
        """Blur the patch part of a token mask over the grid; the prefix tokens stay as they are."""
        p = self.prefix_of(lam.shape[1])
        return self.from_map(lam[:, :p], smooth_mask(self.to_map(lam), sigma))


class ImageAdapter:
    """Images ``(B, C, H, W)``: the input point is the model's input itself.

    Feature maps are ``(C, h, w)`` per input with per-element statistics, or
    a vision transformer's tokens ``(1 + N, D)`` on the patch grid ``grid``
    (:class:`TokenGrid`).

    Args:
        grid: the model's patch grid, for token features (default: none).
    """

    kind = "image"
    #: dimensions of a feature map (after the batch) pooled by the statistics
    pooled_dims = 0
    #: the channel dimension of a batch of feature maps ``(B, C, h, w)`` and of inputs ``(B, C, H, W)``
    feature_channel_dim = 1
    point_channel_dim = 1
    #: spatial dimensions the GAN's critic convolves over
    critic_dims = 2

    def __init__(self, grid: TokenGrid | None = None) -> None:
        self.grid = grid

    def check_inputs(self, inputs: Tensor) -> None:
        """Raise ``ValueError`` unless ``inputs`` is a ``(B, C, H, W)`` float batch."""
        if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
            got = (f"{tuple(inputs.shape)} {inputs.dtype}" if isinstance(inputs, Tensor)
                   else type(inputs).__name__)
            raise ValueError(f"expected image batches of shape (B, C, H, W) as floats; got {got}")

    def valid(self, inputs: Tensor) -> Tensor | None:
        """Real positions; ``None``: every pixel is real."""
        return None

    def scored(self, inputs: Tensor) -> Tensor | None:
        """Positions the input stage masks and scores; ``None``: every pixel."""
        return None

    def input_point(self, model: nn.Module) -> tuple[nn.Module, str]:
        """``(module, "input" | "output")`` where the input bottleneck and the GAN act."""
        return model, "input"

    def point_values(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """The clean values at the input point: the images."""
        return inputs

    def run_to_layer(self, model: nn.Module, layer: nn.Module, inputs: Tensor, points: Tensor,
                     layer_name: str) -> Tensor:
        """Features at ``layer`` for ``points`` ``(B * n, *point)``, ``n`` per input in order."""
        return features_at(model, layer, points, layer_name)

    def repeat_inputs(self, inputs: Tensor, points: Tensor, n: int) -> Tensor:
        """What the model is called with when the input point holds ``n`` copies per input.

        The input bottleneck replaces the model's input in a pre-hook, so the
        model is called with the ``B`` clean rows.
        """
        return inputs

    def feature_map(self, values: Tensor) -> Tensor | None:
        """Per-element feature values as a ``(B, C, h, w)`` map: as they are, the patch tokens of a
        vision transformer on their grid, or ``None`` when the features are neither."""
        if values.dim() == 4:
            return values
        if self.grid is not None and self.grid.fits(values):
            return self.grid.to_map(values)
        return None

    def can_smooth(self, shape: tuple[int, ...]) -> bool:
        """Whether features of ``shape`` (without the batch) have the spatial layout the blur needs."""
        return len(shape) == 3 or (self.grid is not None and len(shape) == 2
                                   and self.grid.prefix_of(shape[0]) is not None)

    def smooth(self, lam: Tensor, sigma: float) -> Tensor:
        """Blur a mask over its spatial layout (:func:`~inputiba.bottleneck.smooth_mask`; tokens on their grid)."""
        if sigma > 0 and lam.dim() == 3 and self.grid is not None and self.grid.fits(lam):
            return self.grid.smooth(lam, sigma)
        return smooth_mask(lam, sigma)

    def feature_saliency(self, capacity: Tensor, inputs: Tensor, valid: Tensor | None) -> Tensor | None:
        """``(B, H, W)`` bits per pixel, or ``None`` for features that are not ``(C, h, w)`` maps.

        A vision transformer's patch tokens give their bits on the patch grid
        (the prefix tokens' bits are not part of the map: :meth:`TokenGrid.prefix_bits`).
        """
        grid_map = self.feature_map(capacity)
        if grid_map is None:
            return None
        return capacity_to_saliency(grid_map, tuple(inputs.shape[-2:]))

    def noise_shape(self, points: Tensor) -> tuple[int, ...]:
        """Shape of the GAN's noise mean and std: one per input and channel."""
        return (points.shape[0], points.shape[1]) + (1,) * (points.dim() - 2)

    def initial_mask_logits(self, capacity: Tensor, lam: Tensor, point_shape: tuple[int, ...],
                            start: str) -> Tensor:
        """Logits of ``lambda_G``'s starting point, from the feature stage, at input resolution.

        The feature map per cell (the capacity summed over channels, in bits,
        or for ``start="lambda"`` the channel-mean of the mask) is resized
        bilinearly to ``(H, W)`` and turned into logits by
        :func:`mask_start_logits`; the same for every input channel.

        Args:
            capacity: ``(B, C_f, h, w)`` the feature stage's capacity, nats.
            lam: ``(B, C_f, h, w)`` the feature stage's mask.
            point_shape: ``(B, C, H, W)`` of the inputs.
            start: one of :data:`MASK_STARTS`.

        Returns:
            ``(B, C, H, W)`` logits.
        """
        B, C, H, W = point_shape
        capacity, lam = self.feature_map(capacity), self.feature_map(lam)
        if capacity is None:
            raise ValueError("InputIBA's prior needs a feature map on the image: a (C, h, w) layer or a "
                             "vision transformer's tokens")
        cells = lam.mean(dim=1, keepdim=True) if start == "lambda" else capacity.sum(dim=1, keepdim=True) / LN2
        h, w = cells.shape[-2:]
        resized = F.interpolate(cells, size=(H, W), mode="bilinear", align_corners=False)
        logits = mask_start_logits(resized, start, pixels_per_cell=(H * W) / (h * w))
        return logits.expand(B, C, H, W).contiguous()

    def critic_view(self, samples: Tensor, valid: Tensor | None) -> Tensor:
        """``(B, n, C, h, w)`` feature samples as the critic reads them (tokens: the patches on their grid)."""
        if samples.dim() == 4 and self.grid is not None:
            B, n = samples.shape[:2]
            return self.grid.to_map(samples.flatten(0, 1)).unflatten(0, (B, n))
        return samples

    def attribution(self, alpha: Tensor, valid: Tensor | None) -> Tensor:
        """``(B, H, W)``: ``sigmoid(alpha)`` of the input bottleneck averaged over channels."""
        return torch.sigmoid(alpha).mean(dim=1)


class TokenAdapter:
    """Token ids ``(B, T)``: the input point is the embedding layer's output ``(B, T, D)``.

    Feature maps are ``(T, H)`` per input, channel-last (an LSTM's or a
    transformer layer's output sequence). Statistics are pooled over the real
    positions of every text, one mean and std per feature channel, since
    position ``t`` of one text has nothing in common with position ``t`` of
    another. Padding is found from the ids: every position equal to
    ``pad_index``.

    Special tokens (a transformer's ``[CLS]``, ``[SEP]``, ``<s>``, ``</s>``:
    ``special_ids``) are real positions, but the same in every input, so they
    hold no information about it: the input stage leaves their embeddings
    unchanged, charges them nothing and scores them 0 (:meth:`scored`). At a
    hidden layer they are bottlenecked like every other position, since
    attention has by then gathered information from the whole text into them
    (a clean ``[CLS]`` state would pass all of it around the bottleneck), and
    the feature stage reports their bits.

    Args:
        model: the classifier.
        embedding: its embedding layer, by name or module.
        pad_index: the padding id; ``None`` takes the embedding's
            ``padding_idx``.
        special_ids: ids of special tokens; ``None`` takes the model's
            ``special_token_ids`` attribute (set by
            :class:`inputiba.hf.TextTransformer`), else none.
    """

    kind = "tokens"
    pooled_dims = 1
    critic_dims = 1
    #: the channel dimension of features ``(B, T, H)`` and of embeddings ``(B, T, D)``
    feature_channel_dim = 2
    point_channel_dim = 2

    def __init__(self, model: nn.Module, embedding: str | nn.Module, pad_index: int | None = None,
                 special_ids: Sequence[int] | None = None) -> None:
        self.embedding_name, self.embedding = resolve_layer(model, embedding)
        if pad_index is None:
            pad_index = getattr(model, "pad_index", None)
        if pad_index is None:
            pad_index = getattr(self.embedding, "padding_idx", None)
        if pad_index is None:
            raise ValueError(
                f"cannot tell padding from text: layer {self.embedding_name!r} has no padding_idx; pass "
                "pad_index= (an id outside the vocabulary, e.g. -1, if batches are never padded)")
        self.pad_index = int(pad_index)
        if special_ids is None:
            special_ids = getattr(model, "special_token_ids", ())
        self.special_ids = tuple(sorted({int(i) for i in special_ids} - {self.pad_index}))

    def check_inputs(self, inputs: Tensor) -> None:
        """Raise ``ValueError`` unless ``inputs`` is a ``(B, T)`` integer batch with a token in each row."""
        if not isinstance(inputs, Tensor) or inputs.dim() != 2 or inputs.is_floating_point():
            got = (f"{tuple(inputs.shape)} {inputs.dtype}" if isinstance(inputs, Tensor)
                   else type(inputs).__name__)
            raise ValueError(f"expected token ids of shape (B, T) as integers; got {got}")
        empty = ~(inputs != self.pad_index).any(dim=1)
        if empty.any():
            raise ValueError(f"text {int(empty.nonzero()[0])} of the batch is empty (padding only)")

    def can_smooth(self, shape: tuple[int, ...]) -> bool:
        """Token features have no spatial layout to blur over."""
        return False

    def smooth(self, lam: Tensor, sigma: float) -> Tensor:
        """No blur for text (``sigma`` must be 0)."""
        return smooth_mask(lam, sigma)

    def valid(self, inputs: Tensor) -> Tensor:
        """``(B, T)`` bool, true at real tokens (special tokens included)."""
        return inputs != self.pad_index

    def scored(self, inputs: Tensor) -> Tensor:
        """``(B, T)`` bool, true at the tokens the input stage masks and scores: real, not special."""
        keep = self.valid(inputs)
        if self.special_ids:
            keep = keep & ~torch.isin(inputs, torch.tensor(self.special_ids, device=inputs.device))
        return keep

    def input_point(self, model: nn.Module) -> tuple[nn.Module, str]:
        """The embedding layer's output."""
        return self.embedding, "output"

    def point_values(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """``(B, T, D)`` the embeddings of ``inputs``."""
        return features_at(model, self.embedding, inputs, self.embedding_name)

    def run_to_layer(self, model: nn.Module, layer: nn.Module, inputs: Tensor, points: Tensor,
                     layer_name: str) -> Tensor:
        """Features at ``layer`` with the embeddings replaced by ``points`` ``(B * n, T, D)``."""
        n = points.shape[0] // inputs.shape[0]
        with replaced(self.embedding, "output", lambda original: points):
            return features_at(model, layer, inputs.repeat_interleave(n, dim=0), layer_name)

    def repeat_inputs(self, inputs: Tensor, points: Tensor, n: int) -> Tensor:
        """The ids repeated ``n`` times each: the model's batch must match the embeddings'."""
        return inputs.repeat_interleave(n, dim=0)

    def feature_saliency(self, capacity: Tensor, inputs: Tensor, valid: Tensor | None) -> Tensor:
        """``(B, T)`` bits per token: the capacity summed over the feature channels, 0 at padding."""
        bits = capacity.flatten(2).sum(dim=2) / math.log(2.0)
        return bits * valid if valid is not None else bits

    def noise_shape(self, points: Tensor) -> tuple[int, ...]:
        """One noise mean and std per input and embedding dimension: ``(B, 1, D)``."""
        return (points.shape[0], 1, points.shape[2])

    def initial_mask_logits(self, capacity: Tensor, lam: Tensor, point_shape: tuple[int, ...],
                            start: str) -> Tensor:
        """``(B, T, D)`` logits of ``lambda_G``'s starting point, one value per token.

        The capacity of each token summed over the feature channels, in bits
        (or for ``start="lambda"`` the channel-mean of the mask), turned into
        logits by :func:`mask_start_logits` (a token is its own cell), the
        same for every embedding dimension.
        """
        B, T, D = point_shape
        cells = (lam.flatten(2).mean(dim=2, keepdim=True) if start == "lambda"
                 else capacity.flatten(2).sum(dim=2, keepdim=True) / LN2)
        return mask_start_logits(cells, start, pixels_per_cell=1.0).expand(B, T, D).contiguous()

    def critic_view(self, samples: Tensor, valid: Tensor | None) -> Tensor:
        """``(B, n, T, H)`` samples as ``(B, n, H, T)``, zero at padding for real and fake alike."""
        if valid is not None:
            samples = samples * valid[:, None, :, None].to(samples.dtype)
        return samples.transpose(-1, -2)

    def attribution(self, alpha: Tensor, valid: Tensor | None) -> Tensor:
        """``(B, T)``: ``sigmoid(alpha)`` averaged over the embedding dimension, 0 at padding.

        With a mask shared over the embedding (``alpha`` ``(B, T, 1)``) that is the token's own value.
        """
        scores = torch.sigmoid(alpha).mean(dim=-1)
        return scores * valid if valid is not None else scores


Adapter = ImageAdapter | TokenAdapter


def adapter_for(model: nn.Module, input_layer: str | nn.Module | None,
                pad_index: int | None = None, special_ids: Sequence[int] | None = None) -> Adapter:
    """:class:`TokenAdapter` when an embedding layer is named, else :class:`ImageAdapter`."""
    if input_layer is None:
        if pad_index is not None:
            raise ValueError("pad_index is for text models: name their embedding layer with input_layer=")
        return ImageAdapter(TokenGrid.of(model))
    return TokenAdapter(model, input_layer, pad_index, special_ids)


def expand_valid(valid: Tensor | None, like: Tensor) -> Tensor | None:
    """``(B, T)`` real positions as a float mask broadcastable to ``like`` ``(B, T, ...)``."""
    if valid is None:
        return None
    return valid.to(like.dtype).view(*valid.shape, *([1] * (like.dim() - valid.dim())))



def batch_chunks(adapter: ImageAdapter | TokenAdapter, inputs: Tensor, step: int) -> list[tuple[Tensor, int | None]]:
    """How one call's inputs are split into the batches that are attributed together.

    Images: consecutive runs of ``step`` inputs. Texts: the texts of one
    length (up to the last real token) together, ``step`` at a time, each
    batch cut to that length: a text's result then does not depend on how
    much padding the rest of its call needed (an LSTM over a longer padded
    batch rounds differently, and Adam's first steps magnify that).

    Returns:
        ``(indices, length)`` per batch: the ``(n,)`` positions of its inputs
        in the call (on the inputs' device) and the length to cut them to
        (``None``: keep them whole).
    """
    B = inputs.shape[0]
    device = inputs.device
    if adapter.kind != "tokens":
        return [(torch.arange(s, min(s + step, B), device=device), None) for s in range(0, B, step)]
    valid = adapter.valid(inputs)
    positions = torch.arange(1, inputs.shape[1] + 1, device=device)
    lengths = (valid * positions).amax(dim=1)
    chunks = []
    for length in lengths.unique().tolist():
        same = (lengths == length).nonzero().flatten()
        chunks += [(same[s:s + step], int(length)) for s in range(0, len(same), step)]
    return chunks


def gather_chunks(values: list[Tensor | None], chunks: list[tuple[Tensor, int | None]], total: int,
                  full_length: int | None = None, batch_dim: int = 0) -> Tensor | None:
    """Put the per-batch ``values`` of :func:`batch_chunks` back in the order of the call.

    Args:
        values: one tensor per batch, its inputs along ``batch_dim``.
        chunks: what :func:`batch_chunks` returned.
        total: inputs in the call.
        full_length: for per-position values of cut texts, the call's length:
            the dimension after the batch is padded back to it with zeros.
        batch_dim: 0, or 1 for per-step histories ``(steps, B)``.
    """
    if values[0] is None:
        return None
    first = values[0]
    shape = list(first.shape)
    shape[batch_dim] = total
    if full_length is not None:
        shape[batch_dim + 1] = full_length
    out = first.new_zeros(shape)
    for value, (index, _) in zip(values, chunks):
        if full_length is not None and value.shape[batch_dim + 1] != full_length:
            pad = [0, 0] * (value.dim() - batch_dim - 2) + [0, full_length - value.shape[batch_dim + 1]]
            value = F.pad(value, pad)
        out.index_copy_(batch_dim, index.to(out.device), value)
    return out
