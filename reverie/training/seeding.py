"""Seed streams: every seed a run uses is derived here from ``config.seed`` and a stream name.

Streams are independent (numpy's ``SeedSequence``), so the training envs, evaluation
episodes and diagnostics of one run never share start states, and two runs with
different seeds share none either. Recipes never pick their own offsets.

>>> derive_seed(0, "eval", 3) == derive_seed(0, "eval", 3)
True
>>> len({derive_seed(0, "eval", 0), derive_seed(0, "train", 0), derive_seed(1, "eval", 0)})
3
"""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["derive_seed", "STREAMS"]

#: the named streams in use: collection envs (indexed by collector start), evaluation
#: episodes (indexed by episode), diagnostics, agent initialisation, re-initialisations during
#: training (e.g. PILCO's policy-search restarts, indexed by update)
STREAMS = ("train", "eval", "diagnostics", "init", "restart")


def derive_seed(seed: int, stream: str, index: int = 0) -> int:
    """A 31-bit seed for ``index`` in the named ``stream`` of a run seeded with ``seed``.

    Args:
        seed: the run's ``config.seed``.
        stream: one of :data:`STREAMS`.
        index: position in the stream (e.g. the evaluation episode).
    """
    if stream not in STREAMS:
        raise ValueError(f"Unknown seed stream {stream!r}; streams: {', '.join(STREAMS)}.")
    words = [int(seed) % 2**32, zlib.crc32(stream.encode()), int(index) % 2**32]
    return int(np.random.SeedSequence(words).generate_state(1)[0] >> 1)
