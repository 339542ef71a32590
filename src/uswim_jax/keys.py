"""Named key streams: every random stream of a run, derived from one seed.

A run draws randomness for several independent purposes. Each one has a name in
:data:`KEY_STREAMS` and its own key, ``key_stream(seed, name) =
fold_in(key(seed), crc32(name))``:

- ``"init"``: the model's initial weights.
- ``"data_order"``: the training set's order; epoch ``e`` is shuffled by
  :func:`host_rng` of ``fold_in(stream, e)``.
- ``"augment"``: training augmentation; step ``i`` uses ``fold_in(stream, i)``.
- ``"curvature"``: augmentation in the second-derivative pass; batch ``i`` uses
  ``fold_in(stream, i)``.
- ``"probes"``: Hutchinson's probe vectors.
- ``"random_order"``: the random verification order (the ``random`` method).
- ``"finetune"``: the device noise of noise-aware fine-tuning; step ``i`` uses
  ``fold_in(stream, i)``.
- ``"finetune_order"``: the fine-tuning set's order; epoch ``e`` is shuffled by
  :func:`host_rng` of ``fold_in(stream, e)``.
- ``"trials"``: the base key of the Monte Carlo trials; trial ``t`` (one
  programmed chip) uses ``fold_in(stream, t)``, as ``evaluate`` and ``sweep``
  do with any base key.
- ``"chip"``: variation fixed per chip (device-to-device), apart from the
  trials' write and read noise; chip ``t`` uses ``fold_in(stream, t)``.

What is guaranteed, for the default ``threefry2x32`` key implementation, in which
``fold_in(k, d)`` is the Threefry-2x32 block cipher under the key ``k`` applied
to the block ``(0, d)``, so that for a fixed ``k`` it is injective in the 32-bit
``d``:

- Structurally impossible (exact, for every seed): two streams of one seed are
  equal (their ids, the CRC-32 of the names, are distinct, which is checked when
  this module is imported); two children ``fold_in(stream, i)``,
  ``fold_in(stream, j)``, ``i != j``, of one stream are equal (so no two trials,
  steps or epochs share a key); the root keys of two seeds in ``[0, 2**32)`` are
  equal (``key(seed)`` holds ``(0, seed)``, which is why other seeds are
  refused: with 64-bit integers disabled JAX maps ``2**32`` to the key of 0); a
  stream equals ``fold_in(key(seed), t)`` for ``t < 2**30`` (every id is at
  least ``2**30``; this is the trial key of code that still passes ``key(seed)``
  itself as the base key).
- Distinct with overwhelming probability (keys made under different cipher keys
  are as good as independent 64-bit values, so any given pair coincides with
  probability about ``2**-64``, and among ``N`` keys some pair does with
  probability at most ``N**2 / 2**65``): a stream against a child of another
  stream (e.g. ``"probes"`` against trial 7), children of two different streams
  (e.g. augmentation step 3 against trial 3), and the streams of two different
  seeds. ``tests/test_keys.py`` checks these pairs for the seeds and trial
  counts the configs use.
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import numpy as np

#: The names of the key streams of a run (see the module docstring).
KEY_STREAMS: tuple[str, ...] = (
    "init",
    "data_order",
    "augment",
    "curvature",
    "probes",
    "random_order",
    "finetune",
    "finetune_order",
    "trials",
    "chip",
)

_IDS: dict[str, int] = {name: zlib.crc32(name.encode()) for name in KEY_STREAMS}
if len(set(_IDS.values())) != len(KEY_STREAMS) or min(_IDS.values()) < 2**30:
    raise RuntimeError(f"key stream ids collide or are below 2**30: {_IDS}")


def stream_id(name: str) -> int:
    """The 32-bit id folded into the seed's key for stream ``name``.

    Raises:
        ValueError: ``name`` is not in :data:`KEY_STREAMS`.
    """
    if name not in _IDS:
        raise ValueError(
            f"name must be one of the key streams {KEY_STREAMS}, got {name!r}"
        )
    return _IDS[name]


def key_stream(seed: int, name: str) -> jax.Array:
    """The key of stream ``name`` of the run with ``seed``:
    ``fold_in(key(seed), crc32(name))``.

    Args:
        seed: the run's seed, an integer in ``[0, 2**32)``.
        name: one of :data:`KEY_STREAMS`.

    Returns:
        A typed ``jax.random`` key; the same seed and name always give the same
        key, and no two names of one seed give the same key.

    Raises:
        ValueError: ``seed`` is not an integer in ``[0, 2**32)`` or ``name`` is
            not a stream name.
    """
    ident = stream_id(name)
    if (
        isinstance(seed, bool)
        or not isinstance(seed, (int, np.integer))
        or not 0 <= seed < 2**32
    ):
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    return jax.random.fold_in(jax.random.key(int(seed)), ident)


def host_rng(key: Any) -> np.random.Generator:
    """A NumPy generator seeded by ``key``'s data, for draws made on the host
    (the data order). NumPy's ``SeedSequence`` hashes the key's two words, so
    the generators of distinct keys differ with overwhelming probability."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
