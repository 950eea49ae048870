"""A model cut in two at one layer, so that the part before the layer runs once.

The per-sample bottleneck at a hidden layer changes nothing before that
layer: every step of its fit runs the same prefix on the same input. When
the model can be traced with :mod:`torch.fx`, :func:`split_at` cuts it into

- ``prefix(x)``: the layer's output and every other value of the prefix that
  the rest of the network reads (a skip connection around the layer), run
  once per input; and
- ``suffix(layer_output, *others)``: the rest, run at every step on the
  bottleneck's noisy copies.

The cut is only an optimisation: :meth:`Split.check` checks, per model and
batch, that it reproduces the model's outputs, and callers fall back to
running the whole model (with a hook at the layer) where it does not, or
where the model cannot be traced (data-dependent control flow, several
inputs).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, fx, nn

__all__ = ["Split", "split_at", "outputs_match"]

# in-place operations that fx records as functions or methods
_INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
                      operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor}


class _LeafAt(fx.Tracer):
    """A tracer that keeps the bottleneck's layer whole (a container such as ResNet's ``layer2`` too)."""

    def __init__(self, layer_name: str) -> None:
        super().__init__()
        self.layer_name = layer_name

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname == self.layer_name or super().is_leaf_module(m, qualname)


@dataclass
class Split:
    """A model cut after one layer (made by :func:`split_at`).

    Attributes:
        prefix: ``prefix(x)`` returns ``(layer_output, *others)``.
        suffix: ``suffix(layer_output, *others)`` returns the model's output.
        mutated: which of ``others`` the suffix changes in place; they are
            copied before each call so that the prefix's values stay intact.
    """

    prefix: fx.GraphModule
    suffix: fx.GraphModule
    mutated: tuple[bool, ...]

    def run_prefix(self, x: Tensor) -> tuple[Tensor, tuple]:
        """The layer's output and the other values the suffix reads, for inputs ``x``."""
        values = self.prefix(x)
        return values[0], tuple(values[1:])

    def run_suffix(self, layer_output: Tensor, others: Sequence, run: Callable[..., Any] | None = None) -> Any:
        """The model's output when the layer gives ``layer_output``.

        ``run`` calls :attr:`suffix` another way (e.g. at a lower precision,
        :func:`inputiba.precision.lowered`).
        """
        others = [v.clone() if m else v for v, m in zip(others, self.mutated)]
        return (run or self.suffix)(layer_output, *others)

    @staticmethod
    def repeat(others: Sequence, batch: int, n: int) -> tuple:
        """``others`` for ``n`` copies of each input: tensors with ``batch`` rows repeated row-wise."""
        return tuple(v.repeat_interleave(n, dim=0) if isinstance(v, Tensor) and v.dim() and v.shape[0] == batch
                     else v for v in others)

    def check(self, x: Tensor, logits: Tensor, n_copies: int = 1) -> tuple | None:
        """The other values of the prefix for ``x``, where the cut reproduces ``logits``; else ``None``.

        ``logits`` are the model's outputs for ``x``. With ``n_copies > 1``
        the cut must also reproduce them for ``n_copies`` copies of each input
        made after the prefix, the way the bottleneck runs the suffix (a
        value of the prefix that fixes the batch size would break that).
        """
        if not isinstance(logits, Tensor):
            return None
        try:
            with torch.no_grad():
                features, others = self.run_prefix(x)
                out = self.run_suffix(features, others)
                ok = isinstance(out, Tensor) and out.shape == logits.shape and outputs_match(out, logits)
                if ok and n_copies > 1:
                    B = x.shape[0]
                    out = self.run_suffix(features.repeat_interleave(n_copies, dim=0),
                                          self.repeat(others, B, n_copies))
                    ok = (isinstance(out, Tensor) and out.shape[0] == B * n_copies
                          and outputs_match(out, logits.repeat_interleave(n_copies, dim=0)))
        except Exception:  # whatever the traced code raises, the answer is: do not use the cut
            return None
        return others if ok else None


def outputs_match(a: Tensor, b: Tensor) -> bool:
    """Whether two runs' outputs are the same up to rounding: every difference below 1e-4 of the largest value.

    Batches of other sizes take other kernels, whose rounding differs in the
    last bits; a cut or a copy made in the wrong place differs by the size of
    the outputs.
    """
    if a.shape != b.shape:
        return False
    a, b = a.float(), b.float()
    return bool((a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-6) if b.numel() else True


def split_at(model: nn.Module, layer_name: str) -> Split | None:
    """Cut ``model`` after the module called ``layer_name``; ``None`` where it cannot be cut.

    It cannot where :mod:`torch.fx` cannot trace the model, the model takes
    other than one input, or the layer is called other than exactly once.
    The pieces share the model's modules and parameters (nothing is copied),
    so module hooks still run; callers check the cut with
    :meth:`Split.check` before relying on it.
    """
    try:
        tracer = _LeafAt(layer_name)
        graph = tracer.trace(model)
    except Exception:  # untraceable models are common (control flow on values, packed sequences)
        return None
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    calls = [n for n in nodes if n.op == "call_module" and n.target == layer_name]
    if len(placeholders) != 1 or len(calls) != 1:
        return None
    cut = nodes.index(calls[0])
    before, after = nodes[:cut + 1], nodes[cut + 1:]
    before_set = set(before)
    # values of the prefix the suffix reads; constants (parameters) are read again instead
    needed: list[fx.Node] = []
    for node in after:
        for used in node.all_input_nodes:
            if used in before_set and used is not calls[0] and used.op != "get_attr" and used not in needed:
                needed.append(used)

    prefix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in before:
        env[node] = prefix_graph.node_copy(node, lambda n: env[n])
    prefix_graph.output(tuple(env[n] for n in [calls[0], *needed]))

    suffix_graph = fx.Graph()
    env = {calls[0]: suffix_graph.placeholder("layer_output")}
    for k, node in enumerate(needed):
        env[node] = suffix_graph.placeholder(f"other_{k}")
    for node in after:
        for used in node.all_input_nodes:
            if used not in env and used.op == "get_attr":
                env[used] = suffix_graph.node_copy(used, lambda n: env[n])
        env[node] = suffix_graph.node_copy(node, lambda n: env[n])

    root = tracer.root
    mutated = tuple(any(_mutates(user, node, root) for user in node.users if user in set(after))
                    for node in needed)
    return Split(fx.GraphModule(root, prefix_graph), fx.GraphModule(root, suffix_graph), mutated)


def _mutates(user: fx.Node, node: fx.Node, root: nn.Module) -> bool:
    """Whether ``user`` may change ``node``'s value in place (a cautious guess)."""
    if not user.args or user.args[0] is not node:
        return user.kwargs.get("out") is node
    if user.op == "call_function":
        return user.target in _INPLACE_FUNCTIONS or getattr(user.target, "__name__", "").endswith("_")
    if user.op == "call_method":
        return str(user.target).endswith("_")
    if user.op == "call_module":
        return bool(getattr(root.get_submodule(str(user.target)), "inplace", False))
    return False
