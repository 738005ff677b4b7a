"""Running one gateway on uvicorn until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from hostler.client._connection import mask_url

from .settings import GatewaySettings

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("hostler.gateway")


def serve(settings: GatewaySettings, *, host: str, port: int, log_level: str = "info") -> None:
    """Serves until stopped. SIGTERM stops accepting connections and lets the requests in
    flight finish (up to the request timeout), so a restart drops no answer being made."""
    import uvicorn

    from .app import create_app

    app = create_app(settings)
    log.info(
        "gateway on http://%s:%d in front of %s (%s)",
        host,
        port,
        mask_url(settings.redis_url),
        f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "no API keys: open to anyone who can connect",
    )
    uvicorn.Server(server_config(app, settings, host=host, port=port, log_level=log_level)).run()


def server_config(
    app: Any, settings: GatewaySettings, *, host: str, port: int, log_level: str = "info"
) -> uvicorn.Config:
    """uvicorn's settings for the gateway. Its "auto" loop and HTTP parser are uvloop and
    httptools, which the gateway extra installs: a quarter less CPU per streamed request."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.timeout_s) + 5,
        # The gateway's own log says what matters; access lines only at -v.
        access_log=log_level == "debug",
    )
