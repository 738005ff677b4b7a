"""Models, load/unload, token counts, processes, health and metrics: the non-generation endpoints."""

from __future__ import annotations

import time
from typing import Any

import redis
from hostler.client import AsyncClient, ModelNotFound
from hostler.client._rqstore import queue_keys
from hostler.schemas import DEFAULT_KEEP_ALIVE_S, PRIORITIES, ModelInfo, Status, as_text
from pydantic import BaseModel, ConfigDict, Field
from rq.registry import StartedJobRegistry
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import shapes
from .metrics_render import CONTENT_TYPE, Snapshot, render
from .settings import GatewaySettings

# Queued job ids listed per model and class in /management/processes; the length says the rest.
LISTED_JOBS = 100


class LoadRequest(BaseModel):
    """The body of POST /v1/models/{id}/load: placement options, and load params for the rest."""

    model_config = ConfigDict(extra="allow")

    replicas: int = Field(1, ge=1, le=64, description="Workers to keep, each on its own host.")
    keep_alive: float | str = Field(DEFAULT_KEEP_ALIVE_S, description="Idle time before unloading: s, '5m'; -1 never.")
    pinned: bool = Field(False, description="Never evicted to make room for another model.")


def model_entries(infos: list[ModelInfo]) -> dict[str, dict[str, Any]]:
    """One OpenAI model object per model id, with where it is on disk and where it is loaded."""
    entries: dict[str, dict[str, Any]] = {}
    for info in sorted(infos, key=lambda i: (i.id, i.host)):
        entry = entries.get(info.id)
        if entry is None:
            entry = entries[info.id] = {
                "id": info.id,
                "object": "model",
                "created": 0,
                "owned_by": "hostler",
                "engine": info.engine,
                "size_bytes": info.size_bytes,
                "estimate_bytes": info.estimate_bytes,
                "estimate": info.estimate,
                "chat_template": info.chat_template,
                "hosts": [],
                "loaded_on": [],
                "fits_on": [],
            }
        entry["hosts"].append(info.host)
        if info.loaded:
            entry["loaded_on"].append(info.host)
        entry["fits_on"] = sorted(set(entry["fits_on"]) | set(info.fits_on))
    return entries


class Management:
    def __init__(self, client: AsyncClient, settings: GatewaySettings) -> None:
        self.client = client
        self.settings = settings

    async def list_models(self, request: Request) -> Response:
        entries = model_entries(await self.client.models())
        return JSONResponse({"object": "list", "data": list(entries.values())})

    async def get_model(self, request: Request) -> Response:
        model = request.path_params["model"]
        entries = model_entries(await self.client.models())
        if model not in entries:
            raise ModelNotFound(model, sorted(entries))
        return JSONResponse(entries[model])

    async def load(self, request: Request) -> Response:
        model = request.path_params["model"]
        body = await request.body()
        req: LoadRequest = shapes.parse(LoadRequest, body or b"{}")
        result = await self.client.load(
            model,
            replicas=req.replicas,
            keep_alive=req.keep_alive,
            pinned=req.pinned,
            timeout=self.settings.timeout_s,
            **(req.model_extra or {}),
        )
        return JSONResponse({"object": "model.load", **result.model_dump(mode="json")})

    async def unload(self, request: Request) -> Response:
        result = await self.client.unload(request.path_params["model"], timeout=self.settings.timeout_s)
        return JSONResponse({"object": "model.unload", **result.model_dump(mode="json")})

    async def tokenize(self, request: Request) -> Response:
        req: shapes.TokenizeRequest = shapes.parse(shapes.TokenizeRequest, await request.body())
        count = await self.client.count_tokens(req.model, req.content, timeout=self.settings.timeout_s)
        return JSONResponse({"object": "tokenize", "model": req.model, "count": count})

    async def processes(self, request: Request) -> Response:
        status = await self.client.status()
        queued = await self._queued_jobs(sorted({w.model for w in status.workers} | set(status.queues)))
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        **worker.model_dump(mode="json"),
                        "queued_jobs": queued.get(worker.model, []),
                    }
                    for worker in status.workers
                ],
                "queues": status.queues,
            }
        )

    async def _queued_jobs(self, models: list[str]) -> dict[str, list[dict[str, str]]]:
        if not models:
            return {}
        async with self.client.connection.pipeline(transaction=False) as pipe:
            for model in models:
                for key in queue_keys(self.client.keys, model):
                    pipe.lrange(key, 0, LISTED_JOBS - 1)
            replies = await pipe.execute()
        listed: dict[str, list[dict[str, str]]] = {}
        for i, model in enumerate(models):
            ids = replies[i * len(PRIORITIES) : (i + 1) * len(PRIORITIES)]
            listed[model] = [
                {"id": as_text(job_id), "priority": priority}
                for priority, class_ids in zip(PRIORITIES, ids, strict=True)
                for job_id in class_ids
            ]
        return listed

    async def health(self, request: Request) -> Response:
        started = time.monotonic()
        try:
            await self.client.connection.ping()
        except redis.RedisError as exc:
            return JSONResponse({"status": "unavailable", "redis": f"unreachable: {type(exc).__name__}"}, 503)
        ping_ms = round(1000 * (time.monotonic() - started), 2)
        return JSONResponse({"status": "ok", "redis": "ok", "redis_ping_ms": ping_ms})

    async def metrics(self, request: Request) -> Response:
        return Response(render(await self.snapshot()), media_type=CONTENT_TYPE)

    async def snapshot(self) -> Snapshot:
        status: Status = await self.client.status()
        keys, connection = self.client.keys, self.client.connection
        models = sorted(as_text(m) for m in await connection.smembers(keys.metric_models))
        served = sorted(set(status.queues) | set(models))
        now = time.time()
        async with connection.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.hgetall(keys.metrics(model))
            for model in served:
                for priority in PRIORITIES:
                    # rq's started registry: entries scored by when their execution expires, so a
                    # dead worker's leftovers do not count. Exact, unlike a heartbeat's snapshot.
                    pipe.zcount(StartedJobRegistry.key_template.format(keys.queue_name(model, priority)), now, "+inf")
            replies = await pipe.execute()
        running = replies[len(models) :]
        return Snapshot(
            status=status,
            models={
                model: {as_text(k): as_text(v) for k, v in fields.items()}
                for model, fields in zip(models, replies[: len(models)], strict=True)
            },
            in_flight={
                model: sum(running[i * len(PRIORITIES) : (i + 1) * len(PRIORITIES)]) for i, model in enumerate(served)
            },
        )
