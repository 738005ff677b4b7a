"""Writing a host's report, as the host agent does every heartbeat and scripts/sim_fleet.py's
simulated hosts do too: written once, as sans-I/O steps, so the simulation measures what the
agent writes.

The state (`keys.host`) is written every time; the catalog (`keys.host_catalog`) only when its
digest is not the one this writer wrote last, else its TTL is renewed in the same transaction.
"""

from __future__ import annotations

from hostler.client._steps import Atomic, Command, Steps
from hostler.schemas import HostReport, Keys, split_report

__all__ = ["CATALOG_TTL_S", "REPORT_TTL_S", "write_report"]

REPORT_TTL_S = 8
# Longer than the state's, so that a reader that found a live state in one round trip still
# finds the catalog it names in the next.
CATALOG_TTL_S = 2 * REPORT_TTL_S


def write_report(keys: Keys, report: HostReport, written: str | None) -> Steps[str]:
    """Writes a host's report; `written` is the digest of the catalog this writer wrote last
    (None: none yet). Returns the digest of the catalog now in Redis, for the next call."""
    state, catalog = split_report(report)
    catalog_key = keys.host_catalog(report.host)
    fresh = catalog.digest != written

    def write_catalog() -> Command:
        return ("SET", catalog_key, catalog.model_dump_json(), "EX", CATALOG_TTL_S)

    replies = yield Atomic(
        [
            ("SET", keys.host(report.host), state.model_dump_json(), "EX", REPORT_TTL_S),
            write_catalog() if fresh else ("EXPIRE", catalog_key, CATALOG_TTL_S),
            ("SADD", keys.hosts, report.host),
        ]
    )
    if not fresh and not replies[1]:
        # Gone although this writer wrote it (a failover to a replica that had not received it,
        # a flush): readers leave the host out while its state names a catalog they cannot
        # read, so it is written again now rather than when the models change.
        yield Atomic([write_catalog()])
    return catalog.digest
