"""Attribution methods behind one protocol, found by name.

Every method answers ``method.attribute(inputs, target=...)`` with a
``(B, H, W)`` float map at input resolution, so that evaluation and scripts
treat them alike::

    from inputiba.methods import get_method, available_methods
    method = get_method("grad_cam", model)          # settings as keyword arguments
    method.prepare(loader)                           # only some methods need data
    heat = method.attribute(x, target=y)             # (B, H, W), in method.unit

Each class states its unit, its reduction over channels and its sign. Text
methods (``"lime"``, ``"token_gradient"``, ``"token_gradient_x_input"``,
``"token_integrated_gradients"``, ``"token_occlusion"``, and ``"random"`` /
``"iba"`` / ``"inputiba"`` given ``input_layer=``) take ``(B, T)`` token ids
and return ``(B, T)`` scores, 0 at padding. The
Captum baselines need ``captum`` (``pip install 'inputiba[baselines]'``);
everything else needs only PyTorch.
"""
from .base import AttributionMethod, available_methods, get_method, method_class, register
from .captum_methods import (LRP, CaptumMethod, Deconvolution, DeepLiftShap, GradCAM, Gradient,
                             GuidedBackprop, GuidedGradCAM, IntegratedGradients, Occlusion, SmoothGrad)
from .excitation import ContrastiveExcitationBackprop, ExcitationBackprop
from .extremal import ExtremalPerturbation
from .family import InformationMethod, MultiIBAMethod, ReadoutIBAMethod
from .iba_methods import IBAMethod, InputIBAMethod
from .rise import RISE
from .simple import LinearApproximation, Random
from .text import LimeText, TokenGradient, TokenGradientInput, TokenIntegratedGradients, TokenMethod, TokenOcclusion

__all__ = [
    "AttributionMethod",
    "available_methods",
    "get_method",
    "method_class",
    "register",
    "CaptumMethod",
    "Gradient",
    "SmoothGrad",
    "IntegratedGradients",
    "GuidedBackprop",
    "Deconvolution",
    "GradCAM",
    "GuidedGradCAM",
    "Occlusion",
    "LRP",
    "DeepLiftShap",
    "RISE",
    "ExtremalPerturbation",
    "ExcitationBackprop",
    "ContrastiveExcitationBackprop",
    "LinearApproximation",
    "Random",
    "IBAMethod",
    "InputIBAMethod",
    "TokenMethod",
    "TokenGradient",
    "TokenGradientInput",
    "TokenIntegratedGradients",
    "TokenOcclusion",
    "LimeText",
    "ReadoutIBAMethod",
    "MultiIBAMethod",
    "InformationMethod",
]
