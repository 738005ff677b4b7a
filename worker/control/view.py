"""The controller's view: each live host as the leader counts it, for `client.status()` and
`hostler models ls` (free memory after reservations, placed models, free VRAM per GPU).

`hostler:view` is a hash, host -> HostStatus JSON, with a TTL the leader renews every step. A
host's field is rewritten when its report changed or the step placed or removed something
there: hosts heartbeat every 2 s and the leader steps every 0.5 s, so about a quarter of the
fields a step, the same work every step. Written whole every 2 s instead (a megabyte of JSON at
a thousand hosts), it landed on every fourth step and made the step's p99
(`scripts/simulate_hosts.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis
from hostler.schemas import HostReport, HostStatus, Keys
from redis.typing import EncodableT, FieldT

from .snapshot import Snapshot

__all__ = ["VIEW_TTL_S", "ViewWriter"]

VIEW_TTL_S = 10


@dataclass
class ViewWriter:
    # The report each host's field was made from, as last written.
    _shown: dict[str, HostReport] = field(default_factory=dict)

    def forget(self) -> None:
        """Writes every field at the next step: another leader wrote the view meanwhile."""
        self._shown.clear()

    def write(self, connection: redis.Redis, keys: Keys, snap: Snapshot) -> None:
        changed = [
            host for host, report in snap.reports.items() if self._shown.get(host) is not report or host in snap.touched
        ]
        fresh: dict[FieldT, EncodableT] = {host: _status(host, snap.reports[host], snap) for host in changed}
        gone = [host for host in self._shown if host not in snap.reports]
        with connection.pipeline(transaction=False) as pipe:
            # Before the write, whether the hash is there: one that vanished (a flush, a
            # failover, a step missed past its TTL) is written whole again.
            pipe.expire(keys.view, VIEW_TTL_S)
            if fresh:
                pipe.hset(keys.view, mapping=fresh)
            if gone:
                pipe.hdel(keys.view, *gone)
            pipe.expire(keys.view, VIEW_TTL_S)
            kept = pipe.execute()[0]
        for host in gone:
            del self._shown[host]
        self._shown.update((host, snap.reports[host]) for host in changed)
        if not kept and len(fresh) < len(snap.reports):
            self._shown.clear()
            self.write(connection, keys, snap)


def _status(host: str, report: HostReport, snap: Snapshot) -> str:
    view = snap.view(host)
    status = HostStatus.of(
        report,
        free_bytes=view.free,
        placed={r.model: r.bytes for r in view.residents},
        gpu_free={g.index: view.gpu_free(g) for g in view.gpus},
    )
    return status.model_dump_json()
