"""inputiba: information-bottleneck attribution for PyTorch classifiers.

Which part of the input made a network decide, measured in bits:

>>> from inputiba import IBA
>>> iba = IBA(model, layer="features.17")
>>> iba.estimate(loader, n_samples=1000)
>>> heat = iba.attribute(x, target=y)        # (B, H, W), bits per pixel

and at input resolution, with InputIBA's three stages:

>>> att = InputIBA(model, layer="features.17")
>>> att.estimate(loader)
>>> mask = att.attribute(x, target=y)        # (B, H, W) in [0, 1]
"""
from .bottleneck import capacity_to_saliency, gaussian_kernel, kl_capacity, smooth_mask
from .estimation import FeatureStats, estimate_stats
from .hooks import LayerNotReached
from .gan import GANConfig, GANResult
from .iba import IBA, IBAConfig, IBAResult
from .pipeline import InputIBA, InputIBAConfig, InputIBAResult
from .plotting import plot_saliency_map
from .seeding import input_seed

__version__ = "0.1.0"

__all__ = [
    "IBA",
    "IBAConfig",
    "IBAResult",
    "InputIBA",
    "InputIBAConfig",
    "InputIBAResult",
    "GANConfig",
    "GANResult",
    "FeatureStats",
    "estimate_stats",
    "LayerNotReached",
    "kl_capacity",
    "gaussian_kernel",
    "smooth_mask",
    "capacity_to_saliency",
    "plot_saliency_map",
    "input_seed",
    "__version__",
]
