"""The evaluation harness: every metric for every method on one dataset, in one table.

:func:`run_harness` takes a classifier, a dataset of ``(image, label)`` or
``(image, label, boxes)`` samples and a list of :class:`MethodSpec`, and for
each method attributes the samples batch by batch (target: the label), runs
every metric of :class:`HarnessConfig` on each batch and writes each sample's
results as soon as they exist.

**Text.** Given ``input_layer`` (a text classifier's embedding layer),
:func:`run_harness` takes ``(ids, label[, evidence[, word_ids]])`` samples
instead: ``ids`` a text's ``(T,)`` token ids without padding, ``evidence``
the positions of the tokens that decide its label where they are known, and
``word_ids`` the word of each token (``-1`` for special tokens; default:
every token a word). :class:`TextSamples` makes them from a text dataset and
a model.
Texts are right-padded into batches, every method gets ``input_layer`` and
explains ``(B, T)`` ids, and the metrics are the text ones (token deletion and
insertion, evidence precision); special tokens (``[CLS]``, ``[SEP]``) are
never moved or counted.

The table (mean ± standard error per method and metric) is then built from
those files alone::

    <out_dir>/samples/<label>/settings.json  what the files below were computed with
    <out_dir>/samples/<label>/<index>.npz    the sample's curves
    <out_dir>/samples/<label>/<index>.json   its scores (written last: the sample is done)
    <out_dir>/samples/<label>/sanity.npz     sanity-check similarities of the first samples
    <out_dir>/results.csv, results.md        the table
    <out_dir>/figures/{insertion_deletion,degradation,sensitivity_n,sanity}.png

**Resuming.** A batch is ``batch_size`` consecutive samples and is the unit of
work. A rerun skips the batches whose samples are all on disk and recomputes
the others whole (writing only their missing samples). Results of other
settings in the same ``out_dir`` are refused.

**Seeds.** A sample's maps and scores depend on the sample, the settings and
the seed, not on its batch or on a resume (:mod:`inputiba.seeding`): methods
with per-input randomness (:attr:`AttributionMethod.per_input_seeds`: random,
IBA, InputIBA, MultiIBA) get one seed per sample, ``input_seed(base, index)``
with ``index`` the sample's index in the dataset and ``base`` their ``seed``
setting, else :attr:`HarnessConfig.seed` (a ``seed`` setting of ``None`` is
kept and means fresh noise); the other methods draw the same values for every
input and get ``base`` as it is. The global RNG is seeded with
:attr:`HarnessConfig.seed` during each call, and Sensitivity-N draws each
sample's subsets from ``input_seed(HarnessConfig.seed, index)``. Maps of
different batches agree up to the float rounding of batched kernels.

:func:`run_evaluation` does the same from a configuration file (TOML or JSON,
data and never code; see :func:`evaluation_from_dict`); datasets are found by
kind in :data:`DATASETS`.
"""
from __future__ import annotations

import csv
import inspect
import io
import json
import math
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .evaluation import (EHR_WEIGHTINGS, bbox_score, box_mask, degradation, deletion, ehr, insertion, sanity_check,
                         sensitivity_n, token_deletion, token_evidence, token_insertion, usable_boxes)
from .hooks import resolve_layer
from .io import FailureLog, atomic_path, save_npz
from .methods import AttributionMethod, get_method, method_class
from .methods.base import seeded
from .seeding import Seeds, input_seed
from .validation import model_device

__all__ = [
    "SampleSource",
    "Column",
    "MetricBatch",
    "Metric",
    "DeletionMetric",
    "InsertionMetric",
    "DegradationMetric",
    "SensitivityNMetric",
    "BoundingBoxMetric",
    "EHRMetric",
    "SanityMetric",
    "TokenDeletionMetric",
    "TokenInsertionMetric",
    "EvidenceMetric",
    "METRICS",
    "MethodSpec",
    "HarnessConfig",
    "Summary",
    "HarnessResult",
    "run_harness",
    "DATASETS",
    "TEXT_DATA_KINDS",
    "load_dataset",
    "TextSamples",
    "EvaluationConfig",
    "evaluation_from_dict",
    "load_evaluation",
    "run_evaluation",
]


class SampleSource(Protocol):
    """A dataset: ``len()`` samples, each ``(image, label)`` or ``(image, label, boxes)``.

    ``image`` is a ``(C, H, W)`` float tensor as the model takes it, ``label``
    an int (the class explained and scored), ``boxes`` a sequence of
    ``(x0, y0, x1, y1)`` half-open pixel boxes (see
    :func:`inputiba.evaluation.box_mask`), possibly empty. A torchvision
    dataset or a list of tuples will do.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple: ...


@dataclass(frozen=True)
class Column:
    """One column of the table.

    Attributes:
        key: the score's name in the sample files and the CSV.
        title: the column's title in the Markdown table.
        higher_is_better: the direction of a better score (the title's arrow).
    """

    key: str
    title: str
    higher_is_better: bool

    @property
    def header(self) -> str:
        """The title with an arrow: ↑ higher is better, ↓ lower is better."""
        return f"{self.title} {'↑' if self.higher_is_better else '↓'}"


@dataclass
class MetricBatch:
    """What a metric sees of one batch.

    Attributes:
        model: the classifier.
        inputs: ``(B, C, H, W)`` on the model's device (text: ``(B, T)`` token ids).
        maps: ``(B, H, W)`` float attribution maps (text: ``(B, T)``).
        targets: ``(B,)`` long, the labels.
        boxes: per sample a ``(K_i, 4)`` float64 tensor of boxes, ``K_i >= 0``
            (text: empty).
        seed: one seed per sample for a metric's random draws.
        batch_size: perturbed states per forward pass.
        tokens: text only: the :class:`~inputiba.adapters.TokenAdapter`
            (embedding layer, padding id, special tokens).
        evidence: text only: ``(B, T)`` bool, the evidence tokens (on the inputs' device).
        word_ids: text only: ``(B, T)`` long, the word of each token (``-1``
            for special tokens and padding).
    """

    model: nn.Module
    inputs: Tensor
    maps: Tensor
    targets: Tensor
    boxes: list[Tensor]
    seed: list[int]
    batch_size: int
    tokens: Any = None
    evidence: Tensor | None = None
    word_ids: Tensor | None = None


class Metric:
    """A metric of the harness: its settings are the dataclass fields of a subclass.

    :meth:`compute` returns ``(scores, curves)``: per column key a ``(B,)``
    tensor of scores, NaN where the metric is undefined for a sample, and per
    curve name a ``(B, ...)`` tensor (or one tensor per sample, when their
    lengths differ) saved with each sample.
    """

    #: The metric's name in :data:`METRICS` and in configuration files.
    name: ClassVar[str] = ""
    #: What it scores: ``"image"`` maps or ``"tokens"``.
    modality: ClassVar[str] = "image"

    def columns(self) -> list[Column]:
        """The columns this metric adds to the table."""
        raise NotImplementedError

    def compute(self, batch: MetricBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Scores ``(B,)`` per column key and curves ``(B, ...)`` per name, for one batch."""
        raise NotImplementedError


@dataclass
class DeletionMetric(Metric):
    """Deletion AUC (lower is better): most relevant pixels set to ``baseline`` first.

    Attributes:
        n_steps: pixel groups (100 in the papers).
        baseline: value of deleted pixels, in the model's input space (0: the
            mean of inputs normalised per channel).
    """

    name: ClassVar[str] = "deletion"
    n_steps: int = 100
    baseline: float = 0.0

    def columns(self) -> list[Column]:
        return [Column("deletion", "Deletion AUC", False)]

    def compute(self, batch: MetricBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        r = deletion(batch.model, batch.inputs, batch.maps, batch.targets, self.baseline, self.n_steps,
                     batch.batch_size)
        return {"deletion": r.auc}, {"deletion": r.curve}


@dataclass
class InsertionMetric(Metric):
    """Insertion AUC (higher is better): from a blurred input, most relevant pixels put back first.

    Attributes:
        n_steps: pixel groups (100 in the papers).
        blur_sigma: std of the Gaussian blur of the start image, in pixels.
    """

    name: ClassVar[str] = "insertion"
    n_steps: int = 100
    blur_sigma: float = 5.0

    def columns(self) -> list[Column]:
        return [Column("insertion", "Insertion AUC", True)]

    def compute(self, batch: MetricBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        r = insertion(batch.model, batch.inputs, batch.maps, batch.targets, blur_sigma=self.blur_sigma,
                      n_steps=self.n_steps, batch_size=batch.batch_size)
        return {"insertion": r.auc}, {"insertion": r.curve}


@dataclass
class DegradationMetric(Metric):
    """Degradation (higher is better): area between the LeRF and MoRF curves, per tile size.

    Curves are normalised by the unperturbed target probability; tiles are
    replaced by each image's per-channel mean.

    Attributes:
        tiles: tile sides in pixels, one column each (8 and 14 in IBA).
        n_steps: steps of each curve.
    """

    name: ClassVar[str] = "degradation"
    tiles: tuple[int, ...] = (8, 14)
    n_steps: int = 100

    def __post_init__(self) -> None:
        self.tiles = tuple(int(t) for t in self.tiles)
        if not self.tiles:
            raise ValueError("degradation needs at least one tile size")

    def columns(self) -> list[Column]:
        return [Column(f"degradation_{t}", f"Degradation {t}×{t}", True) for t in self.tiles]

    def compute(self, batch: MetricBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        scores, curves = {}, {}
        for t in self.tiles:
            r = degradation(batch.model, batch.inputs, batch.maps, batch.targets, tile=t, n_steps=self.n_steps,
                            batch_size=batch.batch_size)
            scores[f"degradation_{t}"] = r.score
            curves[f"degradation_{t}_morf"], curves[f"degradation_{t}_lerf"] = r.morf, r.lerf
        return scores, curves


@dataclass
class SensitivityNMetric(Metric):
    """Sensitivity-N (higher is better): each sample's Pearson correlation averaged over N.

    The sample's score is the NaN-ignoring mean over the Ns of the
    correlation between attribution removed and drop of the target logit;
    its per-N correlations are kept as a curve.

    Attributes:
        n_subsets: random subsets per sample and N (100 in the paper).
        ns: subset sizes in units; ``None``: 10 log-spaced from 1 to 80 % of the units.
        tile: unit side in pixels (1: pixels).
        baseline: value of removed pixels.
    """

    name: ClassVar[str] = "sensitivity_n"
    n_subsets: int = 100
    ns: tuple[int, ...] | None = None
    tile: int = 1
    baseline: float = 0.0

    def __post_init__(self) -> None:
        if self.ns is not None:
            self.ns = tuple(int(n) for n in self.ns)

    def columns(self) -> list[Column]:
        return [Column("sensitivity_n", "Sensitivity-N", True)]

    def compute(self, batch: MetricBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        r = sensitivity_n(batch.model, batch.inputs, batch.maps, batch.targets, ns=self.ns,
                          n_subsets=self.n_subsets, baseline=self.baseline, tile=self.tile, seed=batch.seed,
                          batch_size=batch.batch_size)
        ns = r.ns.view(1, -1).expand_as(r.correlation)
        return ({"sensitivity_n": torch.nanmean(r.correlation, dim=1)},
                {"sensitivity_n": r.correlation, "sensitivity_n_ns": ns})


def _on_usable_boxes(batch: MetricBatch, max_fraction: float, score: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``(B,)`` ``score(maps, box_mask)`` on the samples whose boxes cover ``(0, max_fraction]``; NaN elsewhere."""
    mask = box_mask(batch.boxes, tuple(batch.maps.shape[-2:])).to(batch.maps.device)
    usable = usable_boxes(mask, max_fraction)
    out = torch.full((batch.maps.shape[0],), math.nan, dtype=torch.float64, device=batch.maps.device)
    if usable.any():
        out[usable] = score(batch.maps[usable], mask[usable]).to(out.dtype)
    return out


@dataclass
class BoundingBoxMetric(Metric):
    """Bounding-box accuracy (higher is better), on samples with small enough boxes only.

    Attributes:
        max_fraction: largest share of the image the boxes may cover (1/3 in the papers).
    """

    name: ClassVar[str] = "bbox"
    max_fraction: float = 1 / 3

    def columns(self) -> list[Column]:
        return [Column("bbox", "Bounding box", True)]

    def compute(self, batch: MetricBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return {"bbox": _on_usable_boxes(batch, self.max_fraction, bbox_score)}, {}


@dataclass
class EHRMetric(Metric):
    """Effective heat ratio (higher is better), on samples with small enough boxes only.

    Attributes:
        max_fraction: largest share of the image the boxes may cover.
        weighting: ``"heat"`` (the paper's EHR), ``"count"`` (unweighted) or
            ``"heat_share"`` (see :func:`inputiba.evaluation.ehr`).
    """

    name: ClassVar[str] = "ehr"
    max_fraction: float = 1 / 3
    weighting: str = "heat"

    def __post_init__(self) -> None:
        if self.weighting not in EHR_WEIGHTINGS:
            raise ValueError(f"[metrics.ehr] weighting must be one of {', '.join(EHR_WEIGHTINGS)}; "
                             f"got {self.weighting!r}")

    def columns(self) -> list[Column]:
        return [Column("ehr", "EHR", True)]

    def compute(self, batch: MetricBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        def score(maps: Tensor, mask: Tensor) -> Tensor:
            return ehr(maps, mask, weighting=self.weighting)

        return {"ehr": _on_usable_boxes(batch, self.max_fraction, score)}, {}


@dataclass
class SanityMetric:
    """Cascading randomisation (lower final SSIM is better), on the first samples only.

    The layers are re-initialised in order, from the top; after each cut the
    method is rebuilt on the randomised copy (and prepared again if it needs
    data) and its maps compared with the intact model's by SSIM and Spearman
    correlation. The table shows the SSIM after the last cut. Skipped when
    ``layers`` is empty. A bottleneck method given ``stats`` from a file
    keeps those (the intact model's) statistics after every cut; without
    ``stats`` it re-estimates them on each randomised model.

    Attributes:
        layers: dotted layer names, top first.
        n_samples: the first samples of the dataset to check.
        absolute: compare absolute maps.
        inputiba: for ``inputiba`` methods, ``"all_stages"`` (every stage
            runs on the randomised model) or ``"input_stage"`` (the feature
            and GAN stages keep the intact model, only the input stage runs on
            the randomised one); both variants are in InputIBA's paper.
    """

    name: ClassVar[str] = "sanity"
    modality: ClassVar[str] = "image"
    layers: tuple[str, ...] = ()
    n_samples: int = 8
    absolute: bool = True
    inputiba: str = "all_stages"

    def __post_init__(self) -> None:
        self.layers = tuple(str(layer) for layer in self.layers)
        if self.inputiba not in ("all_stages", "input_stage"):
            raise ValueError(f"sanity inputiba must be 'all_stages' or 'input_stage', got {self.inputiba!r}")
        if self.n_samples < 1:
            raise ValueError(f"sanity n_samples must be positive, got {self.n_samples}")

    def columns(self) -> list[Column]:
        """The table's column: SSIM after the last cut."""
        return [Column("sanity", "Sanity SSIM (last cut)", False)]


def _own_steps(curves: Tensor) -> list[Tensor]:
    """Each text's curve up to its own last step (a batch's curves are NaN after a text's last step)."""
    steps = torch.isfinite(curves).sum(dim=1)
    return [c[:int(n)] for c, n in zip(curves, steps)]


@dataclass
class _TokenCurveMetric(Metric):
    """Shared settings of token deletion and insertion (InputIBA's NLP protocol).

    Attributes:
        tokens_per_step: tokens moved per step (2).
        fraction: share of a text's tokens moved in all (the first 40 %).
        baseline: value of a removed embedding (zeros).
    """

    modality: ClassVar[str] = "tokens"
    tokens_per_step: int = 2
    fraction: float = 0.4
    baseline: float = 0.0

    def compute(self, batch: MetricBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        run = token_deletion if self.name == "token_deletion" else token_insertion
        r = run(batch.model, batch.inputs, batch.maps, batch.targets, embedding=batch.tokens.embedding_name,
                pad_index=batch.tokens.pad_index, special_ids=batch.tokens.special_ids,
                tokens_per_step=self.tokens_per_step, fraction=self.fraction, baseline=self.baseline,
                batch_size=batch.batch_size)
        return {self.name: r.auc}, {self.name: _own_steps(r.curve)}


@dataclass
class TokenDeletionMetric(_TokenCurveMetric):
    """Token deletion AUC (lower is better): the most relevant tokens' embeddings zeroed first.

    :func:`inputiba.evaluation.token_deletion`; padding and special tokens
    never move.

    Attributes:
        tokens_per_step: tokens moved per step (2).
        fraction: share of a text's tokens moved in all (the first 40 %).
        baseline: value of a removed embedding (zeros).
    """

    name: ClassVar[str] = "token_deletion"

    def columns(self) -> list[Column]:
        return [Column("token_deletion", "Token deletion AUC", False)]


@dataclass
class TokenInsertionMetric(_TokenCurveMetric):
    """Token insertion AUC (higher is better): from zero embeddings, the most relevant tokens put back first.

    :func:`inputiba.evaluation.token_insertion`; padding and special tokens
    keep their embeddings.

    Attributes:
        tokens_per_step: tokens moved per step (2).
        fraction: share of a text's tokens moved in all (the first 40 %).
        baseline: value of a removed embedding (zeros).
    """

    name: ClassVar[str] = "token_insertion"

    def columns(self) -> list[Column]:
        return [Column("token_insertion", "Token insertion AUC", True)]


@dataclass
class EvidenceMetric(Metric):
    """Evidence precision and exact hits (higher is better), on the texts whose deciding words are known.

    ``evidence``: :func:`inputiba.evaluation.token_evidence`, the share of a
    text's ``n`` top-scored words among its ``n`` evidence words (the
    bounding-box accuracy of text); ``evidence_exact``: 1 when they are
    exactly its top ``n``, else 0. Scored on words, so that a transformer's
    subwords count as the word they make up; a word's score combines its
    tokens' by ``reduce``. Texts without evidence (a neutral text, a real
    corpus) get no score.

    Attributes:
        reduce: ``"mean"``, ``"sum"`` or ``"max"`` of a word's token scores.
    """

    name: ClassVar[str] = "evidence"
    modality: ClassVar[str] = "tokens"
    reduce: str = "mean"

    def columns(self) -> list[Column]:
        return [Column("evidence", "Evidence precision", True), Column("evidence_exact", "Evidence exact", True)]

    def compute(self, batch: MetricBatch) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        B = batch.maps.shape[0]
        device = batch.maps.device
        precision = torch.full((B,), math.nan, dtype=torch.float64, device=device)
        has = batch.evidence.any(dim=1) if batch.evidence is not None else torch.zeros(B, dtype=torch.bool,
                                                                                         device=device)
        if has.any():
            words = None if batch.word_ids is None else batch.word_ids[has]
            precision[has] = token_evidence(batch.maps[has], batch.inputs[has], batch.evidence[has],
                                            batch.tokens.pad_index, batch.tokens.special_ids, words,
                                            self.reduce).to(torch.float64)
        exact = torch.where(has, (precision > 1 - 1e-9).to(torch.float64), precision)
        return {"evidence": precision, "evidence_exact": exact}, {}


#: The metrics by name, in the order of the table's columns; each scores one
#: modality (:attr:`Metric.modality`): images or token ids.
METRICS: dict[str, type] = {cls.name: cls for cls in (
    DeletionMetric, InsertionMetric, DegradationMetric, SensitivityNMetric, BoundingBoxMetric, EHRMetric,
    SanityMetric, TokenDeletionMetric, TokenInsertionMetric, EvidenceMetric)}


def metrics_for(modality: str) -> dict[str, Any]:
    """Every metric of ``modality`` (``"image"`` or ``"tokens"``) with its published defaults."""
    return {name: cls() for name, cls in METRICS.items() if cls.modality == modality}

_LABEL = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")


def _inputiba_config(value: Any, text: bool = False) -> Any:
    """An InputIBA ``config`` setting from a file: a schedule's name (for images or ``text``) or a table of its parts."""
    from .config import config_from_dict
    from .pipeline import SCHEDULES, schedule

    if isinstance(value, Mapping):
        return config_from_dict(dict(value))
    if isinstance(value, str):
        if value not in SCHEDULES:
            raise ValueError(f"inputiba config {value!r}: use one of {', '.join(SCHEDULES)} or a table of settings")
        return schedule(value, text=text)
    return value


@dataclass(frozen=True)
class MethodSpec:
    """An attribution method to evaluate: a registered name and its settings.

    Attributes:
        name: registered name (:func:`inputiba.methods.available_methods`).
        settings: keyword arguments of the method (see its class). For
            ``"inputiba"``, ``config`` may be ``"default"``, ``"published"`` or a
            table as :func:`inputiba.config.config_from_dict` reads it.
        label: the method's row in the table and its folder name (letters,
            digits, ``_.+-``); default ``name``. Lets one method appear twice
            with different settings.
    """

    name: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        if not _LABEL.fullmatch(self.row):
            raise ValueError(f"method label {self.row!r} must be letters, digits and _.+- (it names a folder)")

    @property
    def row(self) -> str:
        """The label, or the name when no label is given."""
        return self.label or self.name

    def build(self, model: nn.Module, tokens: Any = None) -> AttributionMethod:
        """The method for ``model``.

        Args:
            model: the classifier.
            tokens: for a text classifier, its
                :class:`~inputiba.adapters.TokenAdapter`: the method is given
                its embedding layer as ``input_layer`` (and its ``pad_index``)
                unless its settings name them.

        Raises:
            ValueError: unknown name, settings the method does not take, or a
                method that explains images only given a text model.
        """
        settings = dict(self.settings)
        if self.name == "inputiba" and "config" in settings:
            settings["config"] = _inputiba_config(settings["config"], text=tokens is not None)
        if tokens is not None:
            takes = inspect.signature(method_class(self.name)).parameters
            if "input_layer" not in takes:
                raise ValueError(f"method {self.row!r} ({self.name}) explains images only; for text use one that "
                                 "takes input_layer (random, iba, inputiba, lime, token_*)")
            settings.setdefault("input_layer", tokens.embedding_name)
            if "pad_index" in takes:
                settings.setdefault("pad_index", tokens.pad_index)
        try:
            return get_method(self.name, model, **settings)
        except TypeError as err:
            raise ValueError(f"method {self.row!r} ({self.name}) does not take the settings "
                             f"{sorted(settings)}: {err}") from err


@dataclass
class HarnessConfig:
    """Settings of :func:`run_harness`.

    Attributes:
        out_dir: folder of all results (see the module's docs).
        metrics: metric name -> settings object (:data:`METRICS`); a mapping of
            plain settings is converted. ``None`` (the default): every metric
            of the data's modality with its published defaults
            (:func:`metrics_for`; the sanity check is skipped without layers).
        batch_size: samples attributed and scored together; also the unit of
            resumption and of seeding.
        seed: base seed (see the module's docs).
        metric_batch_size: perturbed states per forward pass of a metric.
        prepare_samples: samples given to a method's ``prepare`` (feature
            statistics of IBA and InputIBA, DeepLIFT-SHAP's baselines): the
            first ones of the dataset.
        retry_failed: evaluate again the samples an earlier run recorded as
            failed (by default a resumed run skips them).
    """

    out_dir: str | os.PathLike = "outputs/evaluate"
    metrics: dict[str, Any] | None = None
    batch_size: int = 8
    seed: int = 0
    metric_batch_size: int = 128
    prepare_samples: int = 1000
    retry_failed: bool = False

    def __post_init__(self) -> None:
        if self.metrics is not None:
            unknown = sorted(set(self.metrics) - set(METRICS))
            if unknown:
                raise ValueError(f"unknown metrics {unknown}; known: {list(METRICS)}")
            self.metrics = {name: _settings(METRICS[name], value, f"metrics.{name}")
                            for name, value in self.metrics.items()}
        for name in ("batch_size", "metric_batch_size", "prepare_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def metrics_of(self, modality: str) -> dict[str, Any]:
        """The chosen metrics' settings by name, in the table's column order, for data of ``modality``.

        Raises:
            ValueError: a chosen metric scores another modality (named).
        """
        chosen = metrics_for(modality) if self.metrics is None else self.metrics
        other = sorted(name for name, m in chosen.items() if m.modality != modality)
        if other:
            what = "token ids" if modality == "tokens" else "images"
            raise ValueError(f"metrics {other} do not score {what}; for {what} use "
                             f"{sorted(metrics_for(modality))}")
        return {name: chosen[name] for name in METRICS if name in chosen}


def _settings(cls: type, value: Any, where: str) -> Any:
    """``value`` as a ``cls`` settings object; a mapping's unknown keys are named."""
    if isinstance(value, cls):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"[{where}] must be a table of settings, got {type(value).__name__}")
    _check_keys(value, {f.name for f in fields(cls)}, where)
    return cls(**value)


def _check_keys(table: Mapping, known: set[str], where: str) -> None:
    """Refuse keys of ``table`` outside ``known``, naming them."""
    unknown = sorted(set(table) - known)
    if unknown:
        raise ValueError(f"unknown keys {unknown} in [{where}]; known: {sorted(known)}")


@dataclass(frozen=True)
class Summary:
    """One cell of the table.

    Attributes:
        mean: mean over the samples where the score is defined (NaN if none).
        se: standard error of the mean, ``std (ddof=1) / sqrt(n)`` (NaN if ``n < 2``).
        n: number of samples where the score is defined.
    """

    mean: float
    se: float
    n: int

    @classmethod
    def of(cls, values: np.ndarray) -> "Summary":
        """The summary of per-sample ``values``, NaN meaning undefined."""
        finite = values[np.isfinite(values)]
        n = len(finite)
        mean = float(finite.mean()) if n else math.nan
        se = float(finite.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return cls(mean, se, n)

    def cell(self) -> str:
        """``"mean ± se (n)"`` for the Markdown table; ``"–"`` with no sample."""
        if self.n == 0:
            return "–"
        if self.n == 1:
            return f"{self.mean:.3f} (1)"
        return f"{self.mean:.3f} ± {self.se:.3f} ({self.n})"


@dataclass
class HarnessResult:
    """What :func:`run_harness` produced.

    Attributes:
        columns: the table's columns, in order.
        table: method label -> column key -> :class:`Summary`.
        scores: method label -> column key -> per-sample scores, NaN where
            undefined; ``(n_samples,)``, the sanity column ``(n_sanity,)``.
        computed: method label -> samples attributed in this run (0 when all
            came from the files of an earlier run).
        files: ``"csv"``, ``"markdown"`` and the figures' names -> paths written.
        failed: method label -> the samples that could not be evaluated
            (recorded in ``<out_dir>/failures.jsonl``; left out of the table);
            ``"sanity"`` when the sanity check failed.
    """

    columns: list[Column]
    table: dict[str, dict[str, Summary]]
    scores: dict[str, dict[str, np.ndarray]]
    computed: dict[str, int]
    files: dict[str, Path]
    failed: dict[str, list] = field(default_factory=dict)

    def markdown(self) -> str:
        """The table in Markdown, as written to ``results.md``."""
        lines = ["| method | " + " | ".join(c.header for c in self.columns) + " |",
                 "|---|" + "---:|" * len(self.columns)]
        for label, row in self.table.items():
            lines.append(f"| {label} | " + " | ".join(row[c.key].cell() for c in self.columns) + " |")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- running
@dataclass
class _Collated:
    """One batch of samples: inputs, labels and the ground truth of either modality."""

    inputs: Tensor
    labels: Tensor
    boxes: list[Tensor]
    evidence: Tensor | None = None
    word_ids: Tensor | None = None


def _collate(samples: Sequence[tuple], tokens: Any = None) -> _Collated:
    """``(B, C, H, W)`` images, ``(B,)`` long labels and per-sample ``(K_i, 4)`` boxes.

    Text (``tokens``, the model's :class:`~inputiba.adapters.TokenAdapter`):
    ``(B, T)`` ids right-padded with its padding id and a ``(B, T)`` bool
    evidence mask.
    """
    sizes = (2, 3, 4) if tokens is not None else (2, 3)
    bad = [s for s in samples if not isinstance(s, (tuple, list)) or len(s) not in sizes]
    if bad:
        what = "(ids, label[, evidence[, word_ids]])" if tokens is not None else \
            "(image, label) or (image, label, boxes)"
        raise ValueError(f"samples must be {what} tuples")
    labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
    if tokens is None:
        images = torch.stack([torch.as_tensor(s[0]) for s in samples])
        boxes = [torch.as_tensor(s[2] if len(s) == 3 else [], dtype=torch.float64).reshape(-1, 4) for s in samples]
        return _Collated(images, labels, boxes)
    texts = [torch.as_tensor(s[0]) for s in samples]
    if any(t.dim() != 1 or t.is_floating_point() or len(t) == 0 for t in texts):
        raise ValueError("a text sample's ids must be a non-empty (T,) integer tensor, without padding")
    ids = torch.full((len(texts), max(len(t) for t in texts)), tokens.pad_index, dtype=torch.long)
    evidence = torch.zeros(ids.shape, dtype=torch.bool)
    word_ids = torch.full(ids.shape, -1, dtype=torch.long)
    for b, (t, s) in enumerate(zip(texts, samples)):
        ids[b, :len(t)] = t
        positions = torch.as_tensor(s[2] if len(s) > 2 else [], dtype=torch.long).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(t)):
            raise ValueError(f"evidence positions {positions.tolist()} lie outside a text of {len(t)} tokens")
        evidence[b, positions] = True
        words = torch.as_tensor(s[3], dtype=torch.long) if len(s) > 3 else torch.arange(len(t))
        if words.shape != t.shape:
            raise ValueError(f"word_ids of shape {tuple(words.shape)} for a text of {len(t)} tokens")
        word_ids[b, :len(t)] = words
    return _Collated(ids, labels, [torch.zeros(0, 4, dtype=torch.float64)] * len(texts), evidence, word_ids)


class _Batches:
    """``(inputs, labels)`` batches of the first ``n`` samples, for a method's ``prepare``.

    Re-iterable: some methods read their data twice (a histogram's range,
    then its counts).
    """

    def __init__(self, dataset: SampleSource, n: int, batch_size: int, device: torch.device,
                 tokens: Any = None) -> None:
        self.dataset, self.n, self.batch_size, self.device = dataset, n, batch_size, device
        self.tokens = tokens

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for lo in range(0, self.n, self.batch_size):
            batch = _collate([self.dataset[i] for i in range(lo, min(lo + self.batch_size, self.n))], self.tokens)
            yield batch.inputs.to(self.device), batch.labels.to(self.device)


def _prepared(spec: MethodSpec, model: nn.Module, dataset: SampleSource, config: HarnessConfig,
              tokens: Any = None) -> AttributionMethod:
    """``spec`` built for ``model`` and, if it needs data, prepared on the first samples."""
    method = spec.build(model, tokens)
    if method.needs_preparation():
        n = min(config.prepare_samples, len(dataset))
        method.prepare(_Batches(dataset, n, config.batch_size, model_device(model), tokens), n_samples=n)
    return method


def _method_seed(method: AttributionMethod, spec: MethodSpec, indices: Sequence[int],
                 config: HarnessConfig) -> Seeds:
    """The seed to give ``method`` for the samples ``indices`` (see the module's docs)."""
    base = spec.settings.get("seed", config.seed)
    if base is None or not method.per_input_seeds:
        return base
    return [input_seed(base, int(i)) for i in indices]


def _attribute(method: AttributionMethod, spec: MethodSpec, x: Tensor, y: Tensor, indices: Sequence[int],
               config: HarnessConfig) -> Tensor:
    """``(B, H, W)`` maps of the samples ``indices``, each seeded by its own index."""
    if hasattr(method, "seed"):
        method.seed = _method_seed(method, spec, indices, config)
    with seeded(config.seed, x.device):
        return method.attribute(x, y)


def _done(folder: Path, index: int) -> bool:
    return (folder / f"{index}.json").is_file() and (folder / f"{index}.npz").is_file()


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path, suffix=path.suffix) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def _score(value: Tensor) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _evaluate_batch(method: AttributionMethod, spec: MethodSpec, model: nn.Module, dataset: SampleSource,
                    indices: Sequence[int], metrics: list[Metric], config: HarnessConfig, folder: Path,
                    tokens: Any = None) -> None:
    """Attribute and score one batch; write the files of its samples not yet on disk."""
    collated = _collate([dataset[i] for i in indices], tokens)
    labels = collated.labels
    device = model_device(model)
    x, y = collated.inputs.to(device), labels.to(device)
    maps = _attribute(method, spec, x, y, indices, config)
    evidence, words = (None if t is None else t.to(device) for t in (collated.evidence, collated.word_ids))
    batch = MetricBatch(model, x, maps, y, collated.boxes, [input_seed(config.seed, i) for i in indices],
                        config.metric_batch_size, tokens, evidence, words)
    scores: dict[str, Tensor] = {}
    curves: dict[str, Tensor] = {}
    for metric in metrics:
        s, c = metric.compute(batch)
        scores.update(s)
        curves.update(c)
    for k, index in enumerate(indices):
        if _done(folder, index):
            continue
        save_npz(folder / f"{index}.npz", **{name: curve[k] for name, curve in curves.items()})
        record = {"index": index, "label": int(labels[k]),
                  "scores": {key: _score(value[k]) for key, value in scores.items()}}
        _write_text(folder / f"{index}.json", json.dumps(record, indent=1))


def _run_sanity(spec: MethodSpec, model: nn.Module, dataset: SampleSource, sanity: SanityMetric,
                config: HarnessConfig, path: Path, progress: bool) -> None:
    """Run the sanity check of ``spec`` on the first samples and save it to ``path``."""
    n = min(sanity.n_samples, len(dataset))
    device = model_device(model)
    ssims, spearmans = [], []
    intact = None
    if spec.name == "inputiba" and sanity.inputiba == "input_stage":
        intact = _prepared(spec, model, dataset, config)
    with _bar(n, f"{spec.row} sanity", progress) as bar:
        for lo in range(0, n, config.batch_size):
            indices = range(lo, min(lo + config.batch_size, n))
            collated = _collate([dataset[i] for i in indices])
            images, labels = collated.inputs, collated.labels

            def explain(randomised: nn.Module, x: Tensor, target: Tensor) -> Tensor:
                if intact is not None:
                    seed = _method_seed(intact, spec, indices, config)
                    return intact.inputiba.attribute(x, target, seed=seed, input_model=randomised)
                return _attribute(_prepared(spec, randomised, dataset, config), spec, x, target, indices, config)

            r = sanity_check(model, explain, images.to(device), labels.to(device), sanity.layers,
                             seed=config.seed, absolute=sanity.absolute)
            ssims.append(r.ssim)
            spearmans.append(r.spearman)
            bar.update(images.shape[0])
    save_npz(path, ssim=torch.cat(ssims, dim=1), spearman=torch.cat(spearmans, dim=1),
             layers=np.array(sanity.layers))


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not progress)


def _fingerprint(spec: MethodSpec, n: int, config: HarnessConfig, metrics: Mapping[str, Any]) -> dict:
    """What a method's sample files depend on, as plain JSON data."""
    data = {"method": {"name": spec.name, "settings": dict(spec.settings)}, "n_samples": n,
            "seed": config.seed, "seeding": "per-input", "batch_size": config.batch_size,
            "prepare_samples": config.prepare_samples, "metrics": {name: asdict(m) for name, m in metrics.items()}}
    return json.loads(json.dumps(data, default=repr))


def _check_folder(folder: Path, fingerprint: dict) -> None:
    """Write the settings file of a new folder; refuse one holding results of other settings."""
    path = folder / "settings.json"
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored != fingerprint:
            differ = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
            raise ValueError(f"{folder} holds results computed with other settings (they differ in {differ}); "
                             "choose another out_dir or delete that folder")
    else:
        _write_text(path, json.dumps(fingerprint, indent=1))


def run_harness(model: nn.Module, dataset: SampleSource, methods: Sequence[MethodSpec],
                config: HarnessConfig | None = None, progress: bool = True, *,
                input_layer: str | nn.Module | None = None, pad_index: int | None = None) -> HarnessResult:
    """Evaluate every method with every metric; write the per-sample files, the table and the figures.

    Args:
        model: classifier mapping ``(B, C, H, W)`` to ``(B, K)`` logits; the
            inputs are moved to its device. It is left as found.
        dataset: the samples (:class:`SampleSource`); the label is the target
            explained and scored.
        methods: what to evaluate; their labels must differ.
        config: settings (:class:`HarnessConfig`).
        progress: show progress bars.
        input_layer: a text classifier's embedding layer: the samples are
            then ``(ids, label[, evidence])`` texts (see the module's docs)
            and every method is given this layer.
        pad_index: the padding id of the texts (default: the model's or the
            embedding's); special tokens are the model's ``special_token_ids``.

    Returns:
        A :class:`HarnessResult`; the table is also in ``results.csv`` and
        ``results.md`` of ``config.out_dir``.

    Raises:
        ValueError: no method or sample, repeated labels, an unknown sanity
            layer, a metric or method of the other modality, or ``out_dir``
            holds results of other settings.
    """
    config = config or HarnessConfig()
    tokens = None
    if input_layer is not None:
        from .adapters import TokenAdapter

        tokens = TokenAdapter(model, input_layer, pad_index)
    chosen = config.metrics_of("tokens" if tokens is not None else "image")
    n = len(dataset)
    if n == 0 or not methods:
        raise ValueError("the harness needs at least one sample and one method")
    rows = [spec.row for spec in methods]
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    if repeated:
        raise ValueError(f"methods {repeated} appear more than once; give them distinct labels")
    metrics = [m for m in chosen.values() if isinstance(m, Metric)]
    sanity = chosen.get("sanity")
    if sanity is not None and not sanity.layers:
        sanity = None
    for layer in sanity.layers if sanity else ():
        resolve_layer(model, layer)
    out = Path(config.out_dir)
    failures = FailureLog(out)
    recorded = set() if config.retry_failed else failures.keys()
    computed = {}
    for spec in methods:
        folder = out / "samples" / spec.row
        _check_folder(folder, _fingerprint(spec, n, config, chosen))
        todo = [[i for i in range(lo, min(lo + config.batch_size, n)) if f"{spec.row}/{i}" not in recorded]
                for lo in range(0, n, config.batch_size)]
        todo = [r for r in todo if r and not all(_done(folder, i) for i in r)]
        computed[spec.row] = sum(len(r) for r in todo)
        if todo:
            method = _prepared(spec, model, dataset, config, tokens)
            with _bar(computed[spec.row], spec.row, progress) as bar:
                for k, indices in enumerate(todo):
                    _evaluate_isolated(method, spec, model, dataset, indices, metrics, config, folder, failures,
                                       first=k == 0, tokens=tokens)
                    bar.update(len(indices))
        key = f"{spec.row}/sanity"
        if sanity is not None and not (folder / "sanity.npz").is_file() and key not in recorded:
            try:
                _run_sanity(spec, model, dataset, sanity, config, folder / "sanity.npz", progress)
                failures.clear(key)
            except Exception as err:
                failures.record(key, err)
                warnings.warn(f"{spec.row}: the sanity check failed and is left out: {err}", stacklevel=2)
    result = _report(out, rows, n, metrics, sanity, computed)
    for key in failures.keys():
        row, _, sample = key.rpartition("/")
        if row in result.table:
            result.failed.setdefault(row, []).append(sample if sample == "sanity" else int(sample))
    return result


def _evaluate_isolated(method: AttributionMethod, spec: MethodSpec, model: nn.Module, dataset: SampleSource,
                       indices: list[int], metrics: list[Metric], config: HarnessConfig, folder: Path,
                       failures: FailureLog, first: bool, tokens: Any = None) -> None:
    """Evaluate a batch; if it fails, each sample alone, recording the ones that fail.

    Per-sample seeds make a sample's result the same alone as in its batch.
    When every sample of a method's first batch fails, the error is raised:
    the method is broken, not a sample.
    """
    try:
        _evaluate_batch(method, spec, model, dataset, indices, metrics, config, folder, tokens)
    except Exception:
        errors = []
        for i in indices:
            try:
                _evaluate_batch(method, spec, model, dataset, [i], metrics, config, folder, tokens)
            except Exception as err:
                errors.append(err)
                failures.record(f"{spec.row}/{i}", err)
                warnings.warn(f"{spec.row}: sample {i} failed and is left out: {err}", stacklevel=2)
            else:
                failures.clear(f"{spec.row}/{i}")
        if first and len(errors) == len(indices):
            raise errors[0]
        return
    for i in indices:
        failures.clear(f"{spec.row}/{i}")


# ---------------------------------------------------------------------------- the report
def _load(folder: Path, n: int, columns: list[Column]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-sample scores ``(n,)`` per column and curves ``(n, ...)`` per name, from a method's files."""
    scores = {c.key: np.full(n, math.nan) for c in columns}
    per_curve: dict[str, list[np.ndarray]] = {}
    for i in range(n):
        if not _done(folder, i):  # a sample that failed: left out (NaN)
            continue
        record = json.loads((folder / f"{i}.json").read_text(encoding="utf-8"))
        for key, value in record["scores"].items():
            if key in scores and value is not None:
                scores[key][i] = value
        with np.load(folder / f"{i}.npz") as arrays:
            for name in arrays.files:
                per_curve.setdefault(name, []).append(arrays[name])
    return scores, {name: _stack(values) for name, values in per_curve.items()}


def _stack(values: list[np.ndarray]) -> np.ndarray:
    """The samples' curves as one array; curves of different lengths (texts) NaN-padded at the end."""
    if len({v.shape for v in values}) == 1:
        return np.stack(values)
    out = np.full((len(values), max(len(v) for v in values)), np.nan)
    for row, v in zip(out, values):
        row[:len(v)] = v
    return out


def _report(out: Path, rows: list[str], n: int, metrics: list[Metric], sanity: SanityMetric | None,
            computed: dict[str, int]) -> HarnessResult:
    """Build the table and figures from the files under ``out`` and write them."""
    columns = [c for m in metrics for c in m.columns()] + (sanity.columns() if sanity else [])
    scores, curves, sanities = {}, {}, {}
    for row in rows:
        folder = out / "samples" / row
        scores[row], curves[row] = _load(folder, n, [c for c in columns if c.key != "sanity"])
        if sanity is not None and (folder / "sanity.npz").is_file():
            with np.load(folder / "sanity.npz") as arrays:
                sanities[row] = {name: arrays[name] for name in arrays.files}
            scores[row]["sanity"] = sanities[row]["ssim"][-1].astype(np.float64)
        elif sanity is not None:  # the check failed (recorded in failures.jsonl)
            scores[row]["sanity"] = np.full(min(sanity.n_samples, n), math.nan)
    table = {row: {c.key: Summary.of(scores[row][c.key]) for c in columns} for row in rows}
    files = {"csv": out / "results.csv", "markdown": out / "results.md"}
    result = HarnessResult(columns, table, scores, computed, files)
    _write_text(files["csv"], _csv(result))
    note = ("Mean ± standard error over the samples where a score is defined (their number in brackets); "
            "↑ higher is better, ↓ lower is better.\n")
    _write_text(files["markdown"], result.markdown() + "\n" + note)
    files.update(_figures(out / "figures", metrics, curves, sanities))
    return result


def _csv(result: HarnessResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method"] + [f"{c.key}_{part}" for c in result.columns for part in ("mean", "se", "n")])
    for label, row in result.table.items():
        writer.writerow([label] + [v for c in result.columns
                                   for v in (repr(row[c.key].mean), repr(row[c.key].se), row[c.key].n)])
    return buffer.getvalue()


def _mean_curve(curves: np.ndarray) -> np.ndarray:
    """The mean over samples (axis 0) of the finite values; NaN where there is none."""
    finite = np.where(np.isfinite(curves), curves, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": that step stays NaN
        return np.nanmean(finite, axis=0)


def _resampled(curves: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Each row's finite prefix (a text's own steps) interpolated onto ``grid`` in ``[0, 1]``."""
    out = np.full((len(curves), len(grid)), np.nan)
    for row, c in zip(out, curves):
        c = c[:int(np.isfinite(c).sum())]
        if len(c) > 1:
            row[:] = np.interp(grid, np.linspace(0, 1, len(c)), c)
    return out


def _save_figure(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _style(k: int) -> dict:
    """Colour and marker of method ``k``: distinct for up to 40 methods."""
    return {"color": f"C{k % 10}", "marker": "os^Dv"[k // 10 % 5], "markersize": 3, "markevery": 0.1}


def _outside_legend(fig, ax) -> None:
    """One legend for the figure, right of the plots, so no curve hides behind it."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")


def _figures(folder: Path, metrics: list[Metric], curves: dict[str, dict[str, np.ndarray]],
             sanities: dict[str, dict[str, np.ndarray]]) -> dict[str, Path]:
    """Mean curves per method of the metrics that have curves; figure name -> path.

    Figures are drawn on bare matplotlib ``Figure`` objects (Agg canvas), so
    the user's pyplot backend and state are not touched.
    """
    from matplotlib.figure import Figure

    written = {}
    names = {m.name for m in metrics}
    perturbation = [name for name in ("deletion", "insertion") if name in names]
    if perturbation:
        fig = Figure(figsize=(5 * len(perturbation), 4))
        for ax, name in zip(fig.subplots(1, len(perturbation), squeeze=False)[0], perturbation):
            for k, (label, c) in enumerate(curves.items()):
                mean = _mean_curve(c[name])
                ax.plot(np.linspace(0, 1, len(mean)), mean, label=label, **_style(k))
            ax.set(title=name.capitalize(), xlabel="fraction of pixels " + ("removed" if name == "deletion"
                                                                           else "inserted"),
                   ylabel="target probability")
        _outside_legend(fig, ax)
        written["insertion_deletion"] = _save_figure(fig, folder / "insertion_deletion.png")
    token = [m for m in metrics if isinstance(m, _TokenCurveMetric)]
    if token:
        grid = np.linspace(0, 1, 21)
        fig = Figure(figsize=(5 * len(token), 4))
        for ax, m in zip(fig.subplots(1, len(token), squeeze=False)[0], token):
            for k, (label, c) in enumerate(curves.items()):
                ax.plot(grid, _mean_curve(_resampled(c[m.name], grid)), label=label, **_style(k))
            verb = "removed" if m.name == "token_deletion" else "inserted"
            ax.set(title=m.name.replace("_", " ").capitalize(),
                   xlabel=f"share of the first {m.fraction:.0%} of each text's tokens {verb}",
                   ylabel="target probability")
        _outside_legend(fig, ax)
        written["token_insertion_deletion"] = _save_figure(fig, folder / "token_insertion_deletion.png")
    tiles = next((m.tiles for m in metrics if isinstance(m, DegradationMetric)), ())
    if tiles:
        fig = Figure(figsize=(5 * len(tiles), 4))
        for ax, t in zip(fig.subplots(1, len(tiles), squeeze=False)[0], tiles):
            for k, (label, c) in enumerate(curves.items()):
                for part, line in (("morf", "-"), ("lerf", "--")):
                    mean = _mean_curve(c[f"degradation_{t}_{part}"])
                    ax.plot(np.linspace(0, 1, len(mean)), mean, linestyle=line,
                            label=f"{label} {part.upper()}", **_style(k))
            ax.set(title=f"Degradation, {t}×{t} tiles (MoRF solid, LeRF dashed)",
                   xlabel="fraction of tiles removed", ylabel="target probability / unperturbed")
        _outside_legend(fig, ax)
        written["degradation"] = _save_figure(fig, folder / "degradation.png")
    if "sensitivity_n" in names:
        fig = Figure(figsize=(5, 4))
        ax = fig.subplots()
        for k, (label, c) in enumerate(curves.items()):
            ax.plot(c["sensitivity_n_ns"][0], _mean_curve(c["sensitivity_n"]), label=label,
                    **{**_style(k), "markevery": 1})
        ax.set(xscale="log", title="Sensitivity-N", xlabel="N (units removed)", ylabel="mean Pearson correlation")
        _outside_legend(fig, ax)
        written["sensitivity_n"] = _save_figure(fig, folder / "sensitivity_n.png")
    if sanities:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        for k, (label, s) in enumerate(sanities.items()):
            ax.plot(np.arange(s["ssim"].shape[0] + 1), np.concatenate([[1.0], _mean_curve(s["ssim"].T)]),
                    label=label, **{**_style(k), "markevery": 1})
        layers = next(iter(sanities.values()))["layers"]
        ax.set_xticks(np.arange(len(layers) + 1), ["intact"] + [str(layer) for layer in layers], rotation=45,
                      ha="right")
        ax.set(title="Cascading randomisation", xlabel="randomised down to", ylabel="mean SSIM to intact map")
        _outside_legend(fig, ax)
        written["sanity"] = _save_figure(fig, folder / "sanity.png")
    return written


# ---------------------------------------------------------------------------- configuration files
def _bundled_data(n_samples: int | None = None) -> list[tuple[Tensor, int]]:
    """The 16 bundled FashionMNIST test images, normalised for the bundled CNN (the first ``n_samples``)."""
    from .models import bundled_samples

    _, x, labels = bundled_samples()
    n = x.shape[0] if n_samples is None else min(n_samples, x.shape[0])
    return [(x[i], int(labels[i])) for i in range(n)]


def _fashion_mnist_data(root: str, split: str = "test", n_samples: int | None = None) -> SampleSource:
    """FashionMNIST from local files (:func:`inputiba.datasets.fashion_mnist`), the first ``n_samples``."""
    from torch.utils.data import Subset

    from .datasets import fashion_mnist

    if split not in ("train", "test"):
        raise ValueError(f"[data] split must be 'train' or 'test', got {split!r}")
    data = fashion_mnist(root, train=split == "train")
    return data if n_samples is None else Subset(data, range(min(n_samples, len(data))))


def _cluttered_data(root: str = "data", split: str = "test", n_samples: int = 64,
                    seed: int = 0) -> SampleSource:
    """Cluttered Fashion-MNIST canvases with their target boxes (:mod:`inputiba.cluttered`)."""
    from .cluttered import ClutteredFashionMNIST

    return ClutteredFashionMNIST(root, split=split, n=n_samples, seed=seed)


def _first(data: Any, n_samples: int | None, start: int = 0) -> Any:
    """Texts ``start`` to ``start + n_samples`` of a :class:`~inputiba.datasets.TextDataset` (all: ``None``)."""
    if start < 0 or (n_samples is not None and n_samples < 1):
        raise ValueError(f"[data] start must be >= 0 and n_samples positive; got {start} and {n_samples}")
    end = len(data) if n_samples is None else min(start + n_samples, len(data))
    return data.subset(range(start, end))


def _synthetic_sentiment_data(n_samples: int = 64, seed: int = 123, classes: Sequence[str] | None = None) -> Any:
    """Generated texts whose deciding tokens are known (:func:`inputiba.datasets.synthetic_sentiment`).

    ``seed`` 123 is held out from every bundled model's training texts
    (seed 0); ``classes`` keeps only those classes (e.g. ``["negative",
    "positive"]``, the texts that have evidence).
    """
    from .datasets import synthetic_sentiment

    data = synthetic_sentiment(max(3 * n_samples, 3), seed=seed)
    if classes is not None:
        unknown = sorted(set(classes) - set(data.classes))
        if unknown:
            raise ValueError(f"[data] classes {unknown} unknown; known: {data.classes}")
        data = data.subset([i for i, y in enumerate(data.labels) if data.classes[y] in classes])
    return _first(data, n_samples)


def _rotten_tomatoes_data(split: str = "test", start: int = 0, n_samples: int | None = 200,
                          path: str | None = None) -> Any:
    """Rotten Tomatoes reviews, split as every training script of the project splits them (20 % test, seed 0)."""
    from .datasets import rotten_tomatoes

    if split not in ("train", "test"):
        raise ValueError(f"[data] split must be 'train' or 'test', got {split!r}")
    train, test = rotten_tomatoes(path).split(0.2, seed=0)
    return _first(test if split == "test" else train, n_samples, start)


def _imdb_data(root: str, split: str = "test", start: int = 0, n_samples: int | None = 200) -> Any:
    """IMDb reviews from a local ``aclImdb`` folder (:func:`inputiba.datasets.imdb`)."""
    from .datasets import imdb

    return _first(imdb(root, split), n_samples, start)


def _text_file_data(path: str, text: str = "text", label: str = "label", classes: Sequence[str] | None = None,
                    start: int = 0, n_samples: int | None = None) -> Any:
    """Your own texts: a CSV, TSV or JSON-lines file with a text and a label column.

    Labels are class indices or class names; names are looked up in
    ``classes`` (default: the model's classes). Texts are split into words
    by :func:`inputiba.text.tokenize`.
    """
    from .datasets import TextDataset
    from .text import tokenize

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"[data] path {p} is not a file")
    with open(p, encoding="utf-8", newline="") as f:
        if p.suffix in (".jsonl", ".json"):
            rows = []
            for k, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{p}, line {k}: not JSON ({err.msg})") from None
        else:
            rows = list(csv.DictReader(f, delimiter="\t" if p.suffix == ".tsv" else ","))
    if not rows:
        raise ValueError(f"{p} holds no text")
    missing = [c for c in (text, label) if c not in rows[0]]
    if missing:
        raise ValueError(f"{p} has no column {missing[0]!r}; it has {sorted(rows[0])}")
    names = list(classes) if classes is not None else []
    tokens, labels = [], []
    for k, row in enumerate(rows):
        value = str(row[label]).strip()
        if value.lstrip("-").isdigit():
            y = int(value)
        elif value in names:
            y = names.index(value)
        else:
            raise ValueError(f"{p}, text {k}: label {value!r} is neither a class index nor one of {names}")
        if not 0 <= y < max(len(names), y + 1):
            raise ValueError(f"{p}, text {k}: label {y} out of range for {len(names)} classes")
        tokens.append(tokenize(str(row[text])))
        labels.append(y)
    empty = [k for k, t in enumerate(tokens) if not t]
    if empty:
        raise ValueError(f"{p}: text {empty[0]} is empty")
    return _first(TextDataset(tokens, labels, names or [str(c) for c in range(max(labels) + 1)]), n_samples, start)


#: Dataset loaders by ``[data] kind``; the other ``[data]`` keys are their
#: keyword arguments. An image loader returns a :class:`SampleSource`; one
#: with boxes (a cluttered benchmark) yields ``(image, label, boxes)`` samples
#: and so gets the bounding-box metrics. A text loader
#: (:data:`TEXT_DATA_KINDS`) returns a :class:`~inputiba.datasets.TextDataset`,
#: which :class:`TextSamples` encodes with the model's tokenizer; one with
#: evidence (the synthetic task) gets the evidence metric.
DATASETS: dict[str, Callable[..., Any]] = {
    "bundled": _bundled_data,
    "fashion_mnist": _fashion_mnist_data,
    "cluttered": _cluttered_data,
    "synthetic_sentiment": _synthetic_sentiment_data,
    "rotten_tomatoes": _rotten_tomatoes_data,
    "imdb": _imdb_data,
    "text_file": _text_file_data,
}

#: The ``[data]`` kinds of texts, for a ``[model] kind = "text"``.
TEXT_DATA_KINDS = frozenset({"synthetic_sentiment", "rotten_tomatoes", "imdb", "text_file"})


class TextSamples:
    """A text dataset as the harness takes it: ``(ids, label, evidence, word_ids)`` per text.

    Each text is encoded on its own by the model's tokenizer
    (``checkpoint.encode``: a vocabulary's words or a transformer's
    subwords, special tokens included), so its ids do not depend on the
    others. ``evidence`` holds the positions of the tokens of its deciding
    words (every subword of each), empty where none are known.

    Args:
        data: a :class:`~inputiba.datasets.TextDataset`.
        checkpoint: a text model of :func:`inputiba.models.load_text_model`
            (anything with ``encode(texts, max_length)``).
        max_length: cut longer texts to this many tokens (special tokens
            included); evidence past the cut is dropped.
    """

    def __init__(self, data: Any, checkpoint: Any, max_length: int | None = None) -> None:
        if len(data) == 0:
            raise ValueError("the text dataset is empty")
        self.data, self.checkpoint, self.max_length = data, checkpoint, max_length

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Tensor, int, list[int], list[int]]:
        """``(ids, label, evidence, word_ids)``: ``word_ids`` the word of each token, ``-1`` for special ones."""
        enc = self.checkpoint.encode([self.data.tokens[index]], self.max_length)
        ids = enc.ids[0, :len(enc.tokens[0])].clone()
        words = set(self.data.evidence[index]) if self.data.evidence else set()
        evidence = [t for t, w in enumerate(enc.word_ids[0]) if w is not None and w in words]
        word_ids = [-1 if w is None else int(w) for w in enc.word_ids[0]]
        return ids, int(self.data.labels[index]), evidence, word_ids


def load_dataset(kind: str, **settings: Any) -> SampleSource:
    """The dataset of :data:`DATASETS` named ``kind``, with its settings.

    Raises:
        ValueError: unknown kind, or settings the loader does not take (named).
    """
    if kind not in DATASETS:
        raise ValueError(f"unknown data kind {kind!r}; known: {sorted(DATASETS)}")
    loader = DATASETS[kind]
    _check_keys(settings, set(inspect.signature(loader).parameters), f"data kind={kind}")
    return loader(**settings)


@dataclass
class EvaluationConfig:
    """A whole evaluation, as read from a configuration file.

    Attributes:
        model: ``arch``, ``weights`` and ``num_classes`` for
            :func:`inputiba.models.load_model`; or, with ``kind = "text"``,
            ``checkpoint`` (an LSTM file or a transformer folder for
            :func:`inputiba.models.load_text_model`; ``"bundled"``: the
            bundled Rotten Tomatoes LSTM) and ``max_length``.
        data: ``kind`` and the settings of its loader (:data:`DATASETS`).
        methods: the methods to evaluate.
        harness: the :class:`HarnessConfig`.
        device: torch device of the model and inputs.
        progress: show progress bars.
    """

    model: dict[str, Any]
    data: dict[str, Any]
    methods: list[MethodSpec]
    harness: HarnessConfig
    device: str = "cpu"
    progress: bool = True


_MODEL_KEYS = {"kind", "arch", "weights", "num_classes"}
_TEXT_MODEL_KEYS = {"kind", "checkpoint", "max_length"}
_RUN_KEYS = {"out_dir", "seed", "batch_size", "metric_batch_size", "prepare_samples", "device", "progress"}


def _table(data: Mapping, key: str) -> Mapping:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"[{key}] must be a table, got {type(value).__name__}")
    return value


def evaluation_from_dict(data: Mapping[str, Any]) -> EvaluationConfig:
    """An :class:`EvaluationConfig` from the parsed contents of a configuration file.

    Sections: ``[model]`` (``arch``, ``weights``: a file, ``"bundled"`` or
    ``"hub"``, optional ``num_classes``; or ``kind = "text"`` with
    ``checkpoint`` and optional ``max_length``); ``[data]`` (``kind`` and its
    loader's settings; a text model takes a kind of :data:`TEXT_DATA_KINDS`); ``[[methods]]`` (``name``, optional ``label`` and a
    ``settings`` table); ``[metrics]`` (one table per metric to run, with its
    settings; absent: every metric with its defaults); ``[run]`` (the
    :class:`HarnessConfig` fields but ``metrics``, plus ``device`` and
    ``progress``). Relative paths are relative to the working directory.

    Raises:
        ValueError: a missing or unknown section, key or setting (named).
    """
    _check_keys(data, {"model", "data", "methods", "metrics", "run"}, "top level")
    model, run = dict(_table(data, "model")), dict(_table(data, "run"))
    model.setdefault("kind", "image")
    if model["kind"] not in ("image", "text"):
        raise ValueError(f"[model] kind must be 'image' or 'text', got {model['kind']!r}")
    text = model["kind"] == "text"
    _check_keys(model, _TEXT_MODEL_KEYS if text else _MODEL_KEYS, "model")
    if text:
        if "checkpoint" not in model:
            raise ValueError("[model] kind = \"text\" needs checkpoint (an LSTM file, a transformer folder "
                             "or \"bundled\")")
    elif "arch" not in model:
        raise ValueError("[model] needs arch (e.g. arch = \"fashion_cnn\")")
    else:
        model.setdefault("weights", None)
    data_settings = dict(_table(data, "data"))
    kind = data_settings.pop("kind", None)
    if kind not in DATASETS:
        raise ValueError(f"[data] kind must be one of {sorted(DATASETS)}, got {kind!r}")
    if text != (kind in TEXT_DATA_KINDS):
        wanted = sorted(TEXT_DATA_KINDS) if text else sorted(set(DATASETS) - TEXT_DATA_KINDS)
        raise ValueError(f"[data] kind {kind!r} does not suit a{' text' if text else 'n image'} model; use one of "
                         f"{wanted}")
    _check_keys(data_settings, set(inspect.signature(DATASETS[kind]).parameters), f"data kind={kind}")
    entries = data.get("methods")
    if not isinstance(entries, list) or not entries:
        raise ValueError("give at least one [[methods]] entry with a name")
    methods = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ValueError(f"[[methods]] entry {k} needs a name")
        _check_keys(entry, {"name", "label", "settings"}, f"methods {entry['name']}")
        methods.append(MethodSpec(entry["name"], dict(_table(entry, "settings")), entry.get("label")))
    _check_keys(run, _RUN_KEYS, "run")
    device, progress = str(run.pop("device", "cpu")), run.pop("progress", True)
    if not isinstance(progress, bool):
        raise ValueError(f"[run] progress must be true or false, got {progress!r}")
    harness = HarnessConfig(**run, **({"metrics": dict(_table(data, "metrics"))} if "metrics" in data else {}))
    return EvaluationConfig(model, {"kind": kind, **data_settings}, methods, harness, device, progress)


def load_evaluation(path: str | os.PathLike) -> EvaluationConfig:
    """Read an :class:`EvaluationConfig` from a ``.toml`` or ``.json`` file."""
    from .config import read_data_file

    return evaluation_from_dict(read_data_file(path))


def run_evaluation(config: EvaluationConfig) -> HarnessResult:
    """Load the model and data of ``config`` and run :func:`run_harness`.

    A text model's data are encoded by :class:`TextSamples`; when no text has
    known evidence (a corpus) and ``[metrics]`` is not given, the metrics are
    token deletion and insertion only.
    """
    from .models import load_model, load_text_model

    data = dict(config.data)
    kind = data.pop("kind")
    if config.model.get("kind", "image") == "text":
        path = config.model["checkpoint"]
        ck = load_text_model(None if path == "bundled" else path, config.device)
        if kind == "text_file":
            data.setdefault("classes", list(ck.classes))
        texts = load_dataset(kind, **data)
        harness = config.harness
        if harness.metrics is None and not any(texts.evidence):  # a corpus: no text has known evidence
            harness = replace(harness, metrics={name: m for name, m in metrics_for("tokens").items()
                                                if name != "evidence"})
        dataset = TextSamples(texts, ck, config.model.get("max_length"))
        return run_harness(ck.model, dataset, config.methods, harness, config.progress, input_layer=ck.input_layer)
    model = load_model(config.model["arch"], config.model["weights"], config.model.get("num_classes"))
    dataset = load_dataset(kind, **data)
    return run_harness(model.to(config.device), dataset, config.methods, config.harness, config.progress)
