"""The evaluation harness: every metric for every method on one dataset, in one table.

:func:`run_harness` takes a classifier, a dataset of ``(image, label)`` or
``(image, label, boxes)`` samples and a list of :class:`MethodSpec`, and for
each method attributes the samples batch by batch (target: the label), runs
every metric of :class:`HarnessConfig` on each batch and writes each sample's
results as soon as they exist. The table (mean ± standard error per method
and metric) is then built from those files alone::

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .evaluation import (EHR_WEIGHTINGS, bbox_score, box_mask, degradation, deletion, ehr, insertion, sanity_check,
                         sensitivity_n, usable_boxes)
from .hooks import resolve_layer
from .io import FailureLog, atomic_path, save_npz
from .methods import AttributionMethod, get_method
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
    "METRICS",
    "MethodSpec",
    "HarnessConfig",
    "Summary",
    "HarnessResult",
    "run_harness",
    "DATASETS",
    "load_dataset",
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
        inputs: ``(B, C, H, W)`` on the model's device.
        maps: ``(B, H, W)`` float attribution maps.
        targets: ``(B,)`` long, the labels.
        boxes: per sample a ``(K_i, 4)`` float64 tensor of boxes, ``K_i >= 0``.
        seed: one seed per sample for a metric's random draws.
        batch_size: perturbed states per forward pass.
    """

    model: nn.Module
    inputs: Tensor
    maps: Tensor
    targets: Tensor
    boxes: list[Tensor]
    seed: list[int]
    batch_size: int


class Metric:
    """A metric of the harness: its settings are the dataclass fields of a subclass.

    :meth:`compute` returns ``(scores, curves)``: per column key a ``(B,)``
    tensor of scores, NaN where the metric is undefined for a sample, and per
    curve name a ``(B, ...)`` tensor saved with each sample.
    """

    #: The metric's name in :data:`METRICS` and in configuration files.
    name: ClassVar[str] = ""

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


#: The metrics by name, in the order of the table's columns.
METRICS: dict[str, type] = {cls.name: cls for cls in (
    DeletionMetric, InsertionMetric, DegradationMetric, SensitivityNMetric, BoundingBoxMetric, EHRMetric,
    SanityMetric)}

_LABEL = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")


def _inputiba_config(value: Any) -> Any:
    """An InputIBA ``config`` setting from a file: a schedule's name or a table of its parts."""
    from .config import config_from_dict
    from .pipeline import SCHEDULES, schedule

    if isinstance(value, Mapping):
        return config_from_dict(dict(value))
    if isinstance(value, str):
        if value not in SCHEDULES:
            raise ValueError(f"inputiba config {value!r}: use one of {', '.join(SCHEDULES)} or a table of settings")
        return schedule(value)
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

    def build(self, model: nn.Module) -> AttributionMethod:
        """The method for ``model``.

        Raises:
            ValueError: unknown name or settings the method does not take.
        """
        settings = dict(self.settings)
        if self.name == "inputiba" and "config" in settings:
            settings["config"] = _inputiba_config(settings["config"])
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
            plain settings is converted. Default: every metric with its
            published defaults (the sanity check is skipped without layers).
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
    metrics: dict[str, Any] = field(default_factory=lambda: {name: cls() for name, cls in METRICS.items()})
    batch_size: int = 8
    seed: int = 0
    metric_batch_size: int = 128
    prepare_samples: int = 1000
    retry_failed: bool = False

    def __post_init__(self) -> None:
        unknown = sorted(set(self.metrics) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {list(METRICS)}")
        self.metrics = {name: _settings(METRICS[name], value, f"metrics.{name}")
                        for name, value in self.metrics.items()}
        for name in ("batch_size", "metric_batch_size", "prepare_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    def ordered_metrics(self) -> list[Any]:
        """The chosen metrics' settings, in the table's column order."""
        return [self.metrics[name] for name in METRICS if name in self.metrics]


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
def _collate(samples: Sequence[tuple]) -> tuple[Tensor, Tensor, list[Tensor]]:
    """``(B, C, H, W)`` images, ``(B,)`` long labels and per-sample ``(K_i, 4)`` boxes."""
    bad = [len(s) for s in samples if not isinstance(s, (tuple, list)) or len(s) not in (2, 3)]
    if bad:
        raise ValueError("samples must be (image, label) or (image, label, boxes) tuples")
    images = torch.stack([torch.as_tensor(s[0]) for s in samples])
    labels = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
    boxes = [torch.as_tensor(s[2] if len(s) == 3 else [], dtype=torch.float64).reshape(-1, 4) for s in samples]
    return images, labels, boxes


class _Batches:
    """``(inputs, labels)`` batches of the first ``n`` samples, for a method's ``prepare``.

    Re-iterable: some methods read their data twice (a histogram's range,
    then its counts).
    """

    def __init__(self, dataset: SampleSource, n: int, batch_size: int, device: torch.device) -> None:
        self.dataset, self.n, self.batch_size, self.device = dataset, n, batch_size, device

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for lo in range(0, self.n, self.batch_size):
            images, labels, _ = _collate([self.dataset[i] for i in range(lo, min(lo + self.batch_size, self.n))])
            yield images.to(self.device), labels.to(self.device)


def _prepared(spec: MethodSpec, model: nn.Module, dataset: SampleSource, config: HarnessConfig) -> AttributionMethod:
    """``spec`` built for ``model`` and, if it needs data, prepared on the first samples."""
    method = spec.build(model)
    if method.needs_preparation():
        n = min(config.prepare_samples, len(dataset))
        method.prepare(_Batches(dataset, n, config.batch_size, model_device(model)), n_samples=n)
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
                    indices: Sequence[int], metrics: list[Metric], config: HarnessConfig, folder: Path) -> None:
    """Attribute and score one batch; write the files of its samples not yet on disk."""
    images, labels, boxes = _collate([dataset[i] for i in indices])
    device = model_device(model)
    x, y = images.to(device), labels.to(device)
    maps = _attribute(method, spec, x, y, indices, config)
    batch = MetricBatch(model, x, maps, y, boxes, [input_seed(config.seed, i) for i in indices],
                        config.metric_batch_size)
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
            images, labels, _ = _collate([dataset[i] for i in indices])

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


def _fingerprint(spec: MethodSpec, n: int, config: HarnessConfig) -> dict:
    """What a method's sample files depend on, as plain JSON data."""
    data = {"method": {"name": spec.name, "settings": dict(spec.settings)}, "n_samples": n,
            "seed": config.seed, "seeding": "per-input", "batch_size": config.batch_size, "prepare_samples": config.prepare_samples,
            "metrics": {name: asdict(m) for name, m in config.metrics.items()}}
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
                config: HarnessConfig | None = None, progress: bool = True) -> HarnessResult:
    """Evaluate every method with every metric; write the per-sample files, the table and the figures.

    Args:
        model: classifier mapping ``(B, C, H, W)`` to ``(B, K)`` logits; the
            inputs are moved to its device. It is left as found.
        dataset: the samples (:class:`SampleSource`); the label is the target
            explained and scored.
        methods: what to evaluate; their labels must differ.
        config: settings (:class:`HarnessConfig`).
        progress: show progress bars.

    Returns:
        A :class:`HarnessResult`; the table is also in ``results.csv`` and
        ``results.md`` of ``config.out_dir``.

    Raises:
        ValueError: no method or sample, repeated labels, an unknown sanity
            layer, or ``out_dir`` holds results of other settings.
    """
    config = config or HarnessConfig()
    n = len(dataset)
    if n == 0 or not methods:
        raise ValueError("the harness needs at least one sample and one method")
    rows = [spec.row for spec in methods]
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    if repeated:
        raise ValueError(f"methods {repeated} appear more than once; give them distinct labels")
    metrics = [m for m in config.ordered_metrics() if isinstance(m, Metric)]
    sanity = config.metrics.get("sanity")
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
        _check_folder(folder, _fingerprint(spec, n, config))
        todo = [[i for i in range(lo, min(lo + config.batch_size, n)) if f"{spec.row}/{i}" not in recorded]
                for lo in range(0, n, config.batch_size)]
        todo = [r for r in todo if r and not all(_done(folder, i) for i in r)]
        computed[spec.row] = sum(len(r) for r in todo)
        if todo:
            method = _prepared(spec, model, dataset, config)
            with _bar(computed[spec.row], spec.row, progress) as bar:
                for k, indices in enumerate(todo):
                    _evaluate_isolated(method, spec, model, dataset, indices, metrics, config, folder, failures,
                                       first=k == 0)
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
                       failures: FailureLog, first: bool) -> None:
    """Evaluate a batch; if it fails, each sample alone, recording the ones that fail.

    Per-sample seeds make a sample's result the same alone as in its batch.
    When every sample of a method's first batch fails, the error is raised:
    the method is broken, not a sample.
    """
    try:
        _evaluate_batch(method, spec, model, dataset, indices, metrics, config, folder)
    except Exception:
        errors = []
        for i in indices:
            try:
                _evaluate_batch(method, spec, model, dataset, [i], metrics, config, folder)
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
    return scores, {name: np.stack(values) for name, values in per_curve.items()}


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


#: Dataset loaders by ``[data] kind``; the other ``[data]`` keys are their
#: keyword arguments. A loader returns a :class:`SampleSource`; one with
#: boxes (a cluttered benchmark) yields ``(image, label, boxes)`` samples and
#: so gets the bounding-box metrics.
DATASETS: dict[str, Callable[..., SampleSource]] = {
    "bundled": _bundled_data,
    "fashion_mnist": _fashion_mnist_data,
    "cluttered": _cluttered_data,
}


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
            :func:`inputiba.models.load_model`.
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


_MODEL_KEYS = {"arch", "weights", "num_classes"}
_RUN_KEYS = {"out_dir", "seed", "batch_size", "metric_batch_size", "prepare_samples", "device", "progress"}


def _table(data: Mapping, key: str) -> Mapping:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"[{key}] must be a table, got {type(value).__name__}")
    return value


def evaluation_from_dict(data: Mapping[str, Any]) -> EvaluationConfig:
    """An :class:`EvaluationConfig` from the parsed contents of a configuration file.

    Sections: ``[model]`` (``arch``, ``weights``: a file, ``"bundled"`` or
    ``"hub"``, optional ``num_classes``); ``[data]`` (``kind`` and its
    loader's settings); ``[[methods]]`` (``name``, optional ``label`` and a
    ``settings`` table); ``[metrics]`` (one table per metric to run, with its
    settings; absent: every metric with its defaults); ``[run]`` (the
    :class:`HarnessConfig` fields but ``metrics``, plus ``device`` and
    ``progress``). Relative paths are relative to the working directory.

    Raises:
        ValueError: a missing or unknown section, key or setting (named).
    """
    _check_keys(data, {"model", "data", "methods", "metrics", "run"}, "top level")
    model, run = dict(_table(data, "model")), dict(_table(data, "run"))
    _check_keys(model, _MODEL_KEYS, "model")
    if "arch" not in model:
        raise ValueError("[model] needs arch (e.g. arch = \"fashion_cnn\")")
    model.setdefault("weights", None)
    data_settings = dict(_table(data, "data"))
    kind = data_settings.pop("kind", None)
    if kind not in DATASETS:
        raise ValueError(f"[data] kind must be one of {sorted(DATASETS)}, got {kind!r}")
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
    """Load the model and data of ``config`` and run :func:`run_harness`."""
    from .models import load_model

    model = load_model(config.model["arch"], config.model["weights"], config.model.get("num_classes"))
    data = dict(config.data)
    dataset = load_dataset(data.pop("kind"), **data)
    return run_harness(model.to(config.device), dataset, config.methods, config.harness, config.progress)
