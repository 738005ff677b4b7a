"""What one gateway is told: where Redis is, who may call it, how long a request may take."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr

API_KEYS_ENV = "HOSTLER_API_KEYS"
# 8 MiB of JSON is what a job payload may be; the HTTP body gets a little room for the envelope.
DEFAULT_MAX_BODY_BYTES = 9 * 1024 * 1024
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024
# What a multipart upload adds around its file: boundaries, headers, the purpose field.
MULTIPART_ROOM_BYTES = 64 * 1024


class GatewaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Out of the repr: the URL may hold a password.
    redis_url: str = Field(description="The Redis the queues live on (redis://, rediss://, unix://).", repr=False)
    prefix: str | None = Field(None, description="Redis key prefix; None: $HOSTLER_PREFIX or 'hostler:'.")
    api_keys: tuple[SecretStr, ...] = Field(
        (), description="Bearer keys every endpoint but /health requires; empty: no authentication."
    )
    timeout_s: float = Field(
        600.0,
        gt=0,
        le=86_400,
        description="Longest a request may take, queue wait included; a job not started by then is removed "
        "from its queue and the request answered 504.",
    )
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=1024, description="Largest request body (413 above).")
    no_capacity_retry_s: int = Field(
        30, ge=1, description="Retry-After of a 503 when no host has memory for the model."
    )
    # The Batch API's files live in Redis memory (batch_store.py): these bound what they take.
    max_file_bytes: int = Field(
        DEFAULT_MAX_FILE_BYTES, ge=1024, le=512 * 1024 * 1024, description="Largest uploaded file (413 above)."
    )
    max_files: int = Field(1000, ge=1, description="Most uploaded files kept at once (413 above).")
    max_stored_bytes: int = Field(
        1024 * 1024 * 1024, ge=1024, description="Most bytes all uploaded files hold together (413 above)."
    )
    max_batch_lines: int = Field(50_000, ge=1, description="Most requests in one batch's input file (400 above).")
    batch_in_flight: int = Field(64, ge=1, le=10_000, description="Jobs of one batch queued or running at once.")


def api_keys_from(values: tuple[str, ...] | list[str], env: str | None = None) -> tuple[SecretStr, ...]:
    """Keys from --api-key options and the environment (comma or whitespace separated).

    The environment keeps keys off command lines, where `ps` shows them to every user.
    """
    raw = list(values)
    from_env = os.environ.get(API_KEYS_ENV, "") if env is None else env
    raw.extend(from_env.replace(",", " ").split())
    keys = [key.strip() for key in raw if key.strip()]
    return tuple(SecretStr(key) for key in dict.fromkeys(keys))
