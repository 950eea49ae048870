"""RISE: randomised input sampling for explanation (Petsiuk et al., BMVC 2018).

The saliency of a pixel is the model's expected target probability over
random masks that keep it:

    S(pixel) = 1 / (N p) * sum_i P(target | x * M_i) * M_i(pixel)

Each mask ``M_i`` is a coarse ``s x s`` grid of cells kept with probability
``p``, upsampled bilinearly to ``(s + 1)`` cells of ``ceil(H / s)`` pixels and
cropped at a random shift of up to one cell, so that its edges are soft and
fall anywhere.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AttributionMethod, generator, register

__all__ = ["RISE", "rise_masks"]


def rise_masks(grids: Tensor, shifts: Tensor, size: tuple[int, int]) -> Tensor:
    """Soft RISE masks from binary grids and crop shifts.

    Args:
        grids: ``(n, s, s)`` 0/1 cells.
        shifts: ``(n, 2)`` long row and column shifts, each in ``[0, cell)``.
        size: ``(H, W)`` of the masks.

    Returns:
        ``(n, H, W)`` masks in ``[0, 1]``.
    """
    n, s, _ = grids.shape
    H, W = size
    ch, cw = math.ceil(H / s), math.ceil(W / s)
    up = F.interpolate(grids[:, None].float(), size=((s + 1) * ch, (s + 1) * cw), mode="bilinear",
                       align_corners=False)[:, 0]
    rows = shifts[:, 0, None] + torch.arange(H, device=grids.device)
    cols = shifts[:, 1, None] + torch.arange(W, device=grids.device)
    return up[torch.arange(n, device=grids.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


@register("rise")
class RISE(AttributionMethod):
    """RISE (Petsiuk et al., 2018): masks drawn at random, weighted by the model's probability.

    Masked pixels are set to 0 (the mean image for inputs normalised per
    channel). The score is the softmax probability of the target class. All
    masks are drawn from one generator seeded with ``seed`` before any is
    used, and every image of a batch is explained with the same masks, so an
    image's map depends neither on the batch nor on ``batch_size``.
    ``(B, H, W)``, ``>= 0``: the target probability expected when the pixel
    is kept (``p`` sets the scale).

    Args:
        n_masks: number of masks ``N`` (4000, the paper's setting for 224 px
            ResNet-50; TorchRay defaults to 8000). Fewer give noisier maps.
        cells: grid side ``s`` (7).
        p: probability of keeping a cell (0.5).
        batch_size: masked images per forward pass.
        seed: seed of the masks; ``None`` draws fresh ones at every call.
    """

    unit = "expected target probability when the pixel is kept (>= 0)"

    def __init__(self, model: nn.Module, n_masks: int = 4000, cells: int = 7, p: float = 0.5,
                 batch_size: int = 64, seed: int | None = 0) -> None:
        super().__init__(model)
        if n_masks < 1 or cells < 1 or batch_size < 1:
            raise ValueError("n_masks, cells and batch_size must be positive")
        if not 0 < p <= 1:
            raise ValueError(f"p must be in (0, 1], got {p}")
        self.n_masks, self.cells, self.p, self.batch_size, self.seed = n_masks, cells, p, batch_size, seed

    def _attribute(self, x: Tensor, targets: Tensor) -> Tensor:
        B, _, H, W = x.shape
        s = self.cells
        g = generator(self.seed)
        grids = (torch.rand((self.n_masks, s, s), generator=g) < self.p).float()
        cell = torch.tensor([math.ceil(H / s), math.ceil(W / s)])
        shifts = (torch.rand((self.n_masks, 2), generator=g) * cell).long()
        saliency = torch.zeros(B, H, W, device=x.device, dtype=x.dtype)
        per_pass = max(1, self.batch_size // B)
        rows = torch.arange(B, device=x.device)
        with torch.no_grad():
            for start in range(0, self.n_masks, per_pass):
                sl = slice(start, start + per_pass)
                masks = rise_masks(grids[sl].to(x.device), shifts[sl].to(x.device), (H, W)).to(x.dtype)
                n = masks.shape[0]
                masked = (x[:, None] * masks[None, :, None]).reshape(B * n, *x.shape[1:])
                probs = F.softmax(self.model(masked), dim=1).reshape(B, n, -1)
                score = probs[rows, :, targets]
                saliency += torch.einsum("bn,nhw->bhw", score, masks)
        return saliency / (self.n_masks * self.p)
