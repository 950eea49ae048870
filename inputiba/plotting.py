"""Figures of attribution maps. Normalisation happens here only, for display.

Figures written to a file are drawn on a bare matplotlib ``Figure``, never
through pyplot, so the caller's backend (a notebook's inline one) is left
alone.
"""
from __future__ import annotations

import os

import numpy as np
from torch import Tensor

from .io import atomic_path

__all__ = ["to_display_image", "plot_saliency_map", "plot_panels"]


def to_display_image(image: Tensor | np.ndarray) -> np.ndarray:
    """An image as an ``(H, W)`` or ``(H, W, 3)`` float array in ``[0, 1]`` for display.

    Accepts ``(C, H, W)``, ``(H, W, C)`` or ``(H, W)``; a normalised image is
    min-max scaled (for display only).
    """
    img = image.detach().cpu().float().numpy() if isinstance(image, Tensor) else np.asarray(image, float)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an image of shape (C, H, W), (H, W, C) or (H, W), got {img.shape}")
    lo, hi = float(img.min()), float(img.max())
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def plot_saliency_map(heatmap: Tensor | np.ndarray, image: Tensor | np.ndarray | None = None,
                      path: str | os.PathLike | None = None, ax=None, title: str | None = None,
                      label: str = "bits per pixel", cmap: str = "jet", alpha: float = 0.5):
    """Draw a heatmap, over the image when given, with a colorbar in its unit.

    Args:
        heatmap: ``(H, W)`` map (e.g. bits per pixel).
        image: optional ``(C, H, W)``/``(H, W, C)``/``(H, W)`` image underneath.
        path: save the figure to this PNG file (atomically) and close it.
        ax: matplotlib axes to draw into (a new figure otherwise).
        title: axes title.
        label: colorbar label, the heatmap's unit.
        cmap, alpha: colormap and its opacity over the image.

    Returns:
        The matplotlib axes.
    """
    heat = heatmap.detach().cpu().float().numpy() if isinstance(heatmap, Tensor) else np.asarray(heatmap, float)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be (H, W), got shape {heat.shape}")
    if ax is None and path is not None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4.5, 4))
        ax = fig.subplots()
    elif ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 4))
    else:
        fig = ax.figure
    if image is not None:
        img = to_display_image(image)
        if img.shape[:2] != heat.shape:
            raise ValueError(f"image {img.shape[:2]} and heatmap {heat.shape} differ in size")
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        mappable = ax.imshow(heat, cmap=cmap, alpha=alpha)
    else:
        mappable = ax.imshow(heat, cmap=cmap)
    fig.colorbar(mappable, ax=ax, label=label)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if path is not None:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    return ax


def plot_panels(image: Tensor | np.ndarray, maps: dict[str, tuple[Tensor | np.ndarray, str]],
                path: str | os.PathLike, title: str | None = None,
                box: tuple[int, int, int, int] | None = None) -> None:
    """One row of panels: the image, then each map over it, each with its colorbar.

    Args:
        image: ``(C, H, W)``/``(H, W, C)``/``(H, W)`` image.
        maps: panel title -> ``((H, W) map, unit of its colorbar)``.
        path: PNG file to write (atomically).
        title: figure title.
        box: ``(x0, y0, x1, y1)`` half-open pixel box drawn on every panel
            (e.g. the object's bounding box).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * (1 + len(maps)), 4))
    axes = fig.subplots(1, 1 + len(maps))
    img = to_display_image(image)
    axes[0].imshow(img, cmap="gray" if img.ndim == 2 else None)
    axes[0].set_axis_off()
    axes[0].set_title("image")
    for ax, (name, (heat, unit)) in zip(axes[1:], maps.items()):
        plot_saliency_map(heat, image, ax=ax, title=name, label=unit)
    if box is not None:
        from matplotlib.patches import Rectangle

        x0, y0, x1, y1 = (float(v) for v in box)
        for ax in axes:
            # pixel centres sit on integer coordinates: a half-open box spans x0 - 0.5 .. x1 - 0.5
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor="lime", linewidth=1.5))
    if title:
        fig.suptitle(title)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
