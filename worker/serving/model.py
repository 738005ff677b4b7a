"""The model a worker holds: which params it loads with, loading, reloading and unloading it."""

from __future__ import annotations

import logging
import time

import redis
from hostler.schemas import Keys, LoadParams, LoadResult, ModelSpec
from hostler.worker.engines.protocol import EngineFactory, SlotEngine
from hostler.worker.engines.serial import as_slots
from hostler.worker.models.registry import ModelManifest
from pydantic import ValidationError

log = logging.getLogger("hostler.worker")


class HeldModel:
    def __init__(
        self, connection: redis.Redis, keys: Keys, manifest: ModelManifest, engine_factory: EngineFactory
    ) -> None:
        self.connection = connection
        self.keys = keys
        self.manifest = manifest
        self.engine_factory = engine_factory
        self.engine: SlotEngine | None = None
        self.params: LoadParams | None = None
        self.loads = 0

    def desired_params(self) -> LoadParams:
        """The last successful load's params, else those of a pending `client.load`, else model.yaml's."""
        model = self.manifest.id
        stored, spec = self.connection.mget([self.keys.load_params(model), self.keys.spec(model)])
        if stored:
            try:
                return LoadParams.model_validate_json(stored)
            except ValidationError:
                log.warning("ignoring invalid stored load params for %s", model)
        if spec:
            try:
                return ModelSpec.model_validate_json(spec).params
            except ValidationError:
                log.warning("ignoring an invalid spec for %s", model)
        return self.manifest.load

    def needs_reload(self, params: LoadParams) -> bool:
        return self.engine is None or self.params != params

    def get(self) -> SlotEngine:
        """The loaded engine, loading it with the desired params first if none is."""
        if self.engine is None:
            self.load(self.desired_params(), remember=False)
        assert self.engine is not None
        return self.engine

    def load(self, params: LoadParams, *, remember: bool = True) -> LoadResult:
        if not self.needs_reload(params):
            return LoadResult(model=self.manifest.id, params=params, reloaded=False, seconds=0.0)
        # Only the engine goes: the remembered params are what the next worker loads with,
        # and a preload (remember=False) must not erase them.
        self.close()
        started = time.monotonic()
        loaded = self.engine_factory(self.manifest.path, params, chat_template=self.manifest.chat_template)
        self.engine = as_slots(loaded)
        self.params = params
        self.loads += 1
        if remember:
            self.connection.set(self.keys.load_params(self.manifest.id), params.model_dump_json())
        return LoadResult(
            model=self.manifest.id, params=params, reloaded=True, seconds=round(time.monotonic() - started, 4)
        )

    def unload(self) -> bool:
        """Closes the engine and forgets its params; True if one was loaded."""
        was_loaded = self.engine is not None
        self.close()
        self.connection.delete(self.keys.load_params(self.manifest.id))
        return was_loaded

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
            self.params = None
