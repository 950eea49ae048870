"""Per-input seeds: an input's maps depend on the input, its target, the settings and the seed only.

A batch method that draws its noise for the whole batch from one generator
gives each input the draws of its *position*: the same image explained in
another batch, after a resume, or on another rank gets other noise and
another map. Here every input owns a random stream instead, seeded from a
base seed and a stable key of that input:

- in the Python API (``IBA.attribute``, ``InputIBA.attribute``,
  ``MultiIBA.attribute``) the key of an input is its index within the call,
  so ``attribute(x, seed=0)`` gives input ``i`` the seed
  ``input_seed(0, i)``, whatever ``max_batch`` splits the call into; pass a
  sequence of seeds (one per input) to choose them yourself, e.g.
  ``[input_seed(0, name) for name in names]``;
- ``vision/attribute.py`` keys an image by its path relative to the input
  folder; ``nlp/explain.py`` a text by its index among the texts it was
  given (as the API does);
- the evaluation harness keys a sample by its index in the dataset.

``seed=None`` draws the per-input seeds from the global generator (so
``torch.manual_seed`` still makes a run repeatable, but then the draws depend
on the order of the calls).

Normal draws are made from uniform ones (Box-Muller, float32, both halves of
each pair), which torch generates as one stream: the first ``k`` values of a
draw do not depend on its total size. With ``first`` set to the sequence dimension, a text's noise at its
real positions is then the same whatever the padding its batch needed.

Texts are attributed in batches of one length (:func:`inputiba.adapters.batch_chunks`),
so their results do not depend on the padding either; a text's scores are
then the same, bit for bit, in any batch. Images computed in different
batches agree up to the float rounding of batched kernels (a convolution over
4 images does not round exactly like four convolutions over one): on CPU
about 1e-6 in the masks.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["Seeds", "input_seed", "input_seeds", "InputStreams"]

#: What the API's ``seed`` arguments take: one base seed, one seed per input, or ``None``.
Seeds = int | Sequence[int] | None

_MAX = 2 ** 63 - 1


def input_seed(seed: int, key: int | str) -> int:
    """The seed of the input with stable ``key`` under the base ``seed``.

    A hash (BLAKE2b) of both, so it is the same in every process, on every
    platform and in every Python version (unlike ``hash()`` of a string).

    >>> input_seed(0, "cat/1.png") == input_seed(0, "cat/1.png")
    True
    >>> input_seed(0, 0) != input_seed(0, 1) != input_seed(1, 0)
    True
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MAX


def input_seeds(seed: Seeds, n: int) -> list[int]:
    """One seed per input of a call of ``n`` inputs.

    Args:
        seed: an int (input ``i`` gets ``input_seed(seed, i)``), a sequence
            of ``n`` ints (used as they are), or ``None`` (drawn from the
            global generator).
        n: inputs in the call.

    Raises:
        ValueError: a sequence of the wrong length.
        TypeError: anything else.
    """
    if seed is None:
        return [int(s) for s in torch.randint(0, _MAX, (n,), dtype=torch.int64)]
    if isinstance(seed, Tensor):
        seed = seed.tolist()
    if isinstance(seed, int) and not isinstance(seed, bool):
        return [input_seed(seed, i) for i in range(n)]
    if isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = list(seed)
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} inputs; pass one per input or a single int")
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise TypeError("per-input seeds must be ints")
        return seeds
    raise TypeError(f"seed must be an int, a sequence of ints or None, got {type(seed).__name__}")


class InputStreams:
    """One random generator per input: the draws of input ``b`` come from its own stream.

    Args:
        seeds: one seed per input (:func:`input_seeds`).
        device: where the draws are made.
        stream: which stream of each input (the stages of a method draw from
            different streams of the same seed).
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str, stream: int | str = 0) -> None:
        self.device = torch.device(device)
        self.seeds = list(seeds)
        self.generators = [torch.Generator(device=self.device).manual_seed(input_seed(s, f"stream:{stream}"))
                           for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, *shape: int, dtype: torch.dtype = torch.float32, first: int = 0) -> Tensor:
        """``(B, *shape)`` standard normal draws, row ``b`` from input ``b``'s stream.

        Dimension ``first`` of ``shape`` is drawn outermost: the values at its
        first ``k`` indices do not depend on its length (a text's positions
        whatever the padding).
        """
        outer = _outermost(shape, first)
        if not outer:
            return self.randn(1, dtype=dtype)[:, 0]
        # Box-Muller on float32 uniforms, both halves of each pair: the pairs run along the inner
        # dimensions, so every index of the outermost one takes the same number of draws
        rest = math.prod(outer[1:])
        pairs = (rest + 1) // 2
        u = self.rand(outer[0], pairs, 2)
        radius = torch.sqrt(-2.0 * torch.log1p(-u[..., 0]))
        angle = (2.0 * math.pi) * u[..., 1]
        z = torch.stack((radius * torch.cos(angle), radius * torch.sin(angle)), dim=-1).flatten(-2)
        z = z[..., :rest].reshape(len(self.generators), *outer)
        return z.movedim(1, 1 + first).to(dtype)

    def rand(self, *shape: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """``(B, *shape)`` uniform draws in ``[0, 1)``, row ``b`` from input ``b``'s stream."""
        out = torch.empty((len(self.generators), *shape), device=self.device, dtype=dtype)
        for row, g in zip(out, self.generators):
            row.uniform_(generator=g)
        return out

    def seed_of(self, b: int) -> int:
        """A seed derived from input ``b``'s stream, for code that seeds the global generator."""
        return input_seed(self.seeds[b], "global")


def _outermost(shape: tuple[int, ...], first: int) -> tuple[int, ...]:
    if not 0 <= first < max(len(shape), 1):
        raise ValueError(f"first={first} is not a dimension of shape {shape}")
    return (shape[first],) + shape[:first] + shape[first + 1:] if shape else shape
