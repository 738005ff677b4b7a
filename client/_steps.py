"""Sans-I/O steps: client logic written once as generators, run over sync or asyncio Redis.

A generator of `Steps[T]` yields what it needs done and is sent the answer:
- a list of Redis commands: one pipelined round trip, answered with their replies;
- an `Atomic` list of commands: the same, inside MULTI/EXEC;
- a `ScriptRun`: one Lua script run by its SHA (loaded first where Redis lacks it), answered
  with the script's reply;
- a `Replicated` script run: the script and a WAIT on one connection in one round trip,
  answered with the script's reply and the number of replicas that confirmed it;
- a `Pause`: a sleep, answered with None.
It finally returns its value. An error of a step is thrown into the generator where it
yielded, so it can handle it (a follower treats an unreachable Redis as "no news yet").
`run_sync` and `run_async` are the only places that do the I/O, so Client and AsyncClient
cannot drift apart.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Generator
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

T = TypeVar("T")
Command = tuple[Any, ...]


@dataclass(frozen=True)
class ScriptRun:
    """One run of a Lua script (EVALSHA, with a SCRIPT LOAD first where Redis lacks it)."""

    script: str
    keys: list[str]
    args: list[Any]


@dataclass(frozen=True)
class Replicated:
    """A ScriptRun then `WAIT replicas timeout_ms`, pipelined: WAIT counts the replicas that hold
    what its own connection wrote, so it cannot be a step of its own."""

    run: ScriptRun
    replicas: int
    timeout_ms: int


@dataclass(frozen=True)
class Atomic:
    """Commands another connection sees all done or none done (MULTI/EXEC, one round trip)."""

    commands: list[Command]


@dataclass(frozen=True)
class Pause:
    seconds: float


Step = list[Command] | Atomic | ScriptRun | Replicated | Pause
Steps = Generator[Step, Any, T]
# What only reads (and pipelines): one list of commands per round trip.
Reads = Generator[list[Command], list[Any], T]


@cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


def _replicated_commands(step: Replicated, *, load: bool) -> list[Command]:
    run = step.run
    commands: list[Command] = [("SCRIPT", "LOAD", run.script)] if load else []
    commands.append(("EVALSHA", _sha(run.script), len(run.keys), *run.keys, *run.args))
    commands.append(("WAIT", step.replicas, step.timeout_ms))
    return commands


def _sync_replicated(connection: redis.Redis, step: Replicated) -> tuple[Any, int]:
    try:
        replies = _sync_step(connection, _replicated_commands(step, load=False))
    except NoScriptError:
        # In the same round trip as the run, so that WAIT still follows the script's writes.
        replies = _sync_step(connection, _replicated_commands(step, load=True))
    return replies[-2], int(replies[-1])


async def _async_replicated(connection: redis.asyncio.Redis, step: Replicated) -> tuple[Any, int]:
    try:
        replies = await _async_step(connection, _replicated_commands(step, load=False))
    except NoScriptError:
        replies = await _async_step(connection, _replicated_commands(step, load=True))
    return replies[-2], int(replies[-1])


def _sync_step(connection: redis.Redis, step: Step) -> Any:
    if isinstance(step, Pause):
        time.sleep(step.seconds)
        return None
    if isinstance(step, Replicated):
        return _sync_replicated(connection, step)
    if isinstance(step, ScriptRun):
        arguments = (len(step.keys), *step.keys, *step.args)
        try:
            return connection.evalsha(_sha(step.script), *arguments)
        except NoScriptError:
            connection.script_load(step.script)
            return connection.evalsha(_sha(step.script), *arguments)
    commands, transaction = (step.commands, True) if isinstance(step, Atomic) else (step, False)
    if not commands:
        return []
    with connection.pipeline(transaction=transaction) as pipe:
        for command in commands:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        return pipe.execute()


async def _async_step(connection: redis.asyncio.Redis, step: Step) -> Any:
    if isinstance(step, Pause):
        await asyncio.sleep(step.seconds)
        return None
    if isinstance(step, Replicated):
        return await _async_replicated(connection, step)
    if isinstance(step, ScriptRun):
        arguments = (len(step.keys), *step.keys, *step.args)
        try:
            return await connection.evalsha(_sha(step.script), *arguments)
        except NoScriptError:
            await connection.script_load(step.script)
            return await connection.evalsha(_sha(step.script), *arguments)
    commands, transaction = (step.commands, True) if isinstance(step, Atomic) else (step, False)
    if not commands:
        return []
    async with connection.pipeline(transaction=transaction) as pipe:
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute()


@dataclass(frozen=True)
class _Done:
    value: Any


def _resume(steps: Steps[T], answer: Any, error: Exception | None = None) -> Step | _Done:
    """The next step, after handing the last one's answer (or error) to the generator."""
    try:
        return steps.throw(error) if error is not None else steps.send(answer)
    except StopIteration as stop:
        return _Done(stop.value)


def _sync_answer(connection: redis.Redis, step: Step) -> tuple[Any, Exception | None]:
    try:
        return _sync_step(connection, step), None
    except Exception as exc:  # noqa: BLE001 - the steps decide what an error means
        return None, exc


async def _async_answer(connection: redis.asyncio.Redis, step: Step) -> tuple[Any, Exception | None]:
    try:
        return await _async_step(connection, step), None
    except Exception as exc:  # noqa: BLE001 - the steps decide what an error means
        return None, exc


def run_sync(connection: redis.Redis, steps: Steps[T]) -> T:
    step = _resume(steps, None)
    while not isinstance(step, _Done):
        step = _resume(steps, *_sync_answer(connection, step))
    value: T = step.value
    return value


async def run_async(connection: redis.asyncio.Redis, steps: Steps[T]) -> T:
    step = _resume(steps, None)
    while not isinstance(step, _Done):
        step = _resume(steps, *(await _async_answer(connection, step)))
    value: T = step.value
    return value
