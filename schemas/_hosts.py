"""A host report as it travels: split into a small state written every heartbeat and a catalog
written when it changes, and joined back into the HostReport every reader uses.

At a thousand hosts the controller read 12 MB of reports a step, nearly all of it models on
disk and hardware that had not changed since the host started (docs/architecture.md, "The
control plane at scale"); the state names its catalog by digest, so a reader fetches and
parses a catalog only when the digest is not the one it holds.
"""

from __future__ import annotations

import hashlib

from ._reports import HardwareReport, HostCatalog, HostReport, HostState, ModelInfo, _HostFigures

DIGEST_HEX = 16

_FIGURES = tuple(_HostFigures.model_fields)


def _settled(hardware: HardwareReport | None) -> HardwareReport | None:
    """The hardware without its live figures, which the state carries (and join puts back)."""
    if hardware is None:
        return None
    return hardware.model_copy(update={"ram_available_bytes": 0, "gpus": []})


def host_catalog(models: list[ModelInfo], hardware: HardwareReport | None) -> HostCatalog:
    """The catalog of these models and this hardware, with its digest."""
    bare = HostCatalog(digest="", models=models, hardware=_settled(hardware))
    digest = hashlib.sha256(bare.model_dump_json().encode()).hexdigest()[:DIGEST_HEX]
    return bare.model_copy(update={"digest": digest})


def split_report(report: HostReport) -> tuple[HostState, HostCatalog]:
    """A report as the host writes it: its state, and the catalog the state names."""
    catalog = host_catalog(report.models, report.hardware)
    figures = {name: getattr(report, name) for name in _FIGURES}
    return HostState.model_construct(**figures, catalog=catalog.digest), catalog


def join_report(state: HostState, catalog: HostCatalog) -> HostReport:
    """A host's report from its state and a catalog, both validated already as they were read:
    a controller joins one for each host whose state changed, hundreds a step, so nothing is
    validated twice. The catalog's models are the same objects in every report joined from it."""
    hardware = catalog.hardware
    if hardware is not None:
        hardware = hardware.model_copy(update={"ram_available_bytes": state.ram_available_bytes, "gpus": state.gpus})
    figures = {name: getattr(state, name) for name in _FIGURES}
    return HostReport.model_construct(**figures, models=catalog.models, hardware=hardware)
