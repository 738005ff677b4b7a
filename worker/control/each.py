"""One read command over many keys, in one script call.

The controller reads a thousand assignment hashes and two queue lengths per model every step,
and the janitor checks two keys per leased job every half second: as thousands of pipelined
commands these cost redis-py more CPU to pack and parse than Redis spends answering them. One
EVAL with the keys as KEYS is packed as one command, and Redis still sees every key it touches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["EACH_SCRIPT", "each"]

EACH_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call(ARGV[1], key) end
return out
"""


def each(client: Any, command: str, keys: Sequence[str]) -> Any:
    """Runs `command` (LLEN, HGETALL, EXISTS: one key, no arguments) on every key: queued on a
    pipeline, or sent at once on a connection. With no keys an ECHO stands in, so that a
    pipeline's replies keep their places; its reply is empty."""
    if keys:
        return client.eval(EACH_SCRIPT, len(keys), *keys, command)
    return client.echo("")
