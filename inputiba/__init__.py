"""inputiba: information-bottleneck attribution for PyTorch classifiers.

Which part of the input made a network decide, measured in bits:

>>> from inputiba import IBA
>>> iba = IBA(model, layer="features.17")
>>> iba.estimate(loader, n_samples=1000)
>>> heat = iba.attribute(x, target=y)        # (B, H, W), bits per pixel
"""
from .bottleneck import capacity_to_saliency, gaussian_kernel, kl_capacity, smooth_mask
from .estimation import FeatureStats, estimate_stats
from .hooks import LayerNotReached
from .iba import IBA, IBAConfig, IBAResult
from .plotting import plot_saliency_map

__version__ = "0.1.0"

__all__ = [
    "IBA",
    "IBAConfig",
    "IBAResult",
    "FeatureStats",
    "estimate_stats",
    "LayerNotReached",
    "kl_capacity",
    "gaussian_kernel",
    "smooth_mask",
    "capacity_to_saliency",
    "plot_saliency_map",
    "__version__",
]
