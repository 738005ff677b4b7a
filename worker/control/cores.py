"""Which CPU cores each worker of a host may use: the host's cores divided among its workers.

llama.cpp runs as many threads as the cores a worker may use and spins at a barrier after
every operation, so two workers each running one thread per core of the same cores slow each
other far more than twice: each stalls whenever the other holds a core. Giving every worker
its own share keeps their threads apart; a worker that is alone gets every core again.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def share_cores(cores: Sequence[int], workers: Sequence[K]) -> dict[K, tuple[int, ...]]:
    """Splits `cores` into one contiguous run per worker, in the order given, as even as they
    can be (the first runs get the extra cores). With more workers than cores, each worker gets
    one core, the cores taken in turn: sharing a core beats idling none."""
    ordered = sorted(set(cores))
    if not ordered or not workers:
        return {}
    if len(workers) >= len(ordered):
        return {worker: (ordered[i % len(ordered)],) for i, worker in enumerate(workers)}
    base, extra = divmod(len(ordered), len(workers))
    shares: dict[K, tuple[int, ...]] = {}
    start = 0
    for i, worker in enumerate(workers):
        size = base + (1 if i < extra else 0)
        shares[worker] = tuple(ordered[start : start + size])
        start += size
    return shares
