"""One Batch API batch run on the queue, by whichever gateway holds its lease.

A batch goes validating -> in_progress -> finalizing -> completed; or failed (its input file is
gone or holds no request), cancelling -> cancelled, expired (24 h after it was created). Its
requests run through `hostler batch run`'s runner (`hostler.client.batch.run_requests`) as
batch-priority jobs whose ids come from the batch id and each custom_id. Each request that ends
becomes one line in the batch's output hash (success) or error hash (failure, or a bad line),
and the first writer of a custom_id wins. So a gateway that takes a batch over from one that
died finds what ended in those hashes, re-attaches to the jobs the first one queued (same ids:
nothing is queued twice) and writes no custom_id twice. When every request has a line, the
hashes become the output and error files, in input order, and the batch ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

from hostler.client import AsyncClient, HostlerError, JobFailed
from hostler.client.batch import (
    BadLine,
    BatchSummary,
    Outcome,
    Request,
    job_id_for,
    output_record,
    parse_lines,
    read_requests,
    run_requests,
)
from hostler.schemas import BatchErrors, BatchLineError, BatchObject, ErrorCode, as_text

from .batch_store import BatchStore, FileStore, now
from .errors import ApiError

log = logging.getLogger("hostler.gateway")

# A request the 24 h window closed on, as OpenAI writes it in the error file.
EXPIRED_CODE = "batch_expired"
# How long a resumed batch waits for the hosts to report the models its requests name.
MODELS_WAIT_S = 30.0


class BatchRun:
    """Drives one batch to its end; `watch` is called every lease renewal to notice a cancel."""

    def __init__(self, client: AsyncClient, files: FileStore, batches: BatchStore, batch_id: str, *,
                 max_in_flight: int) -> None:  # fmt: skip
        self.client = client
        self.files = files
        self.batches = batches
        self.batch_id = batch_id
        self.max_in_flight = max_in_flight
        # Set once the batch is cancelling: no request is submitted after it.
        self.stopping = asyncio.Event()

    async def drive(self) -> None:
        batch = await self._load()
        if batch is None:
            return
        if not batch.final:
            if batch.status != "validating":
                # Another gateway ran it and stopped renewing its lease (or this one restarted).
                counts = batch.request_counts
                log.warning("batch %s: resumed here, %s, %d of %d requests already ended", self.batch_id,
                            batch.status, counts.completed + counts.failed, counts.total)  # fmt: skip
            text = await self._input(batch)
            if text is not None:
                await self._go(batch, text)
        await self.batches.retire(self.batch_id)

    async def watch(self) -> None:
        """Stops submitting and cancels the queued jobs of a batch someone asked to cancel."""
        batch = await self._load()
        if batch is not None and batch.status == "cancelling":
            self.stopping.set()
            await self._cancel_queued()

    # -- the phases -------------------------------------------------------------------

    async def _go(self, batch: BatchObject, text: str) -> None:
        if batch.status == "validating":
            started = await self._validate(batch, text)
            if started is None:
                return
            batch = started
        requests = _requests_of(text, batch.endpoint)
        while True:
            if batch.status == "cancelling":
                self.stopping.set()
            if batch.status in ("in_progress", "cancelling"):
                await self._run(batch, requests)
            current = await self._load()
            if current is None:
                return
            batch = current
            ending = await self._ending(batch, requests)
            if ending is not None:
                await self._finalize(batch, requests, ending)
                return
            await asyncio.sleep(1.0)  # unfinished before the window closed: a job timed out; go on

    async def _validate(self, batch: BatchObject, text: str) -> BatchObject | None:
        """Records the bad lines and starts the batch; None if it failed instead."""
        await self._await_hosts()
        requests, bad = await read_requests(self.client, text, endpoint=batch.endpoint)
        if not requests and not bad:
            await self._fail("empty_file", f"input file {batch.input_file_id!r} holds no request lines")
            return None
        for line in bad:
            record = _bad_record(self.batch_id, line)
            await self.batches.record(self.batch_id, output=False, field=f"line:{line.line}", line=record,
                                      tokens=(0, 0))  # fmt: skip
        total = len(requests) + len(bad)

        def start(stored: BatchObject) -> BatchObject | None:
            if stored.status != "validating":
                return None
            counts = stored.request_counts.model_copy(update={"total": total})
            update = {"status": "in_progress", "in_progress_at": now(), "request_counts": counts}
            return stored.model_copy(update=update)

        return await self.batches.update(self.batch_id, start)

    async def _run(self, batch: BatchObject, requests: list[Request]) -> None:
        if _window_closed(batch):
            return  # nothing more is submitted: the batch expires
        todo = await self._not_done(requests)
        if batch.status == "cancelling":
            # Only what was already queued is followed to its end; the rest never starts.
            submitted = await self._submitted()
            todo = [r for r in todo if r.custom_id in submitted]
            await self._cancel_queued()
        await self._await_models({r.model for r in todo})
        summary = BatchSummary(self.batch_id, len(requests), 0, len(requests) - len(todo))
        window_s = max(0.0, (batch.expires_at or math.inf) - time.time())
        deadline = time.monotonic() + min(window_s, 366 * 86_400.0)
        await run_requests(self.client, self.batch_id, self._until_stopped(todo, batch.status == "cancelling"),
                           self._write, summary, self.max_in_flight, deadline)  # fmt: skip

    async def _await_models(self, needed: set[str]) -> None:
        """Waits (up to MODELS_WAIT_S) until some live host has each model: a batch taken over
        right after a restart would otherwise fail every request before the hosts reported."""
        deadline = time.monotonic() + MODELS_WAIT_S
        while time.monotonic() < deadline and not self.stopping.is_set():
            if needed <= {m.id for m in await self.client.models()}:
                return
            await asyncio.sleep(1.0)

    async def _await_hosts(self) -> None:
        """With no host reporting at all (a cluster starting), every model would look unknown:
        waits up to MODELS_WAIT_S for one, so that lines are judged against the real models."""
        deadline = time.monotonic() + MODELS_WAIT_S
        while time.monotonic() < deadline and not await self.client.models():
            await asyncio.sleep(1.0)

    def _until_stopped(self, todo: Iterable[Request], cancelling: bool) -> Iterator[Request]:
        for request in todo:
            if self.stopping.is_set() and not cancelling:
                return
            yield request

    async def _write(self, request: Request, job_id: str, outcome: Outcome) -> None:
        if isinstance(outcome, JobFailed) and outcome.code == ErrorCode.CANCELED and self.stopping.is_set():
            return  # never ran: a cancelled batch leaves it out of both files, as OpenAI's does
        line = json.dumps(output_record(request, job_id, outcome))
        if isinstance(outcome, JobFailed):
            await self.batches.record(self.batch_id, output=False, field=f"id:{request.custom_id}", line=line,
                                      tokens=(0, 0))  # fmt: skip
        else:
            tokens = (outcome.usage.prompt_tokens, outcome.usage.completion_tokens)
            await self.batches.record(self.batch_id, output=True, field=request.custom_id, line=line, tokens=tokens)

    async def _ending(self, batch: BatchObject, requests: list[Request]) -> str | None:
        if batch.status == "cancelling":
            return "cancelled"
        if batch.status == "finalizing":
            return "cancelled" if batch.cancelling_at else "expired" if _window_closed(batch) else "completed"
        if not await self._not_done(requests):
            return "completed"
        return "expired" if _window_closed(batch) else None

    async def _finalize(self, batch: BatchObject, requests: list[Request], ending: str) -> None:
        def finalizing(stored: BatchObject) -> BatchObject | None:
            if stored.status not in ("in_progress", "cancelling"):
                return None
            return stored.model_copy(update={"status": "finalizing", "finalizing_at": now()})

        await self.batches.update(self.batch_id, finalizing)
        if ending == "expired":
            await self._expire_rest(requests)
        out, err = await self.batches.results(self.batch_id)
        order = {r.custom_id: r.line for r in requests}
        stem = self.batch_id.removeprefix("batch_")
        output_id = error_id = None
        if out:
            lines = sorted(out.items(), key=lambda item: order.get(item[0], math.inf))
            output_id = f"file-{stem}-output"
            await self.files.put_output(output_id, f"{self.batch_id}_output.jsonl", _joined(v for _, v in lines))
        if err:
            lines = sorted(err.items(), key=lambda item: _error_line(item[0], order))
            error_id = f"file-{stem}-errors"
            await self.files.put_output(error_id, f"{self.batch_id}_errors.jsonl", _joined(v for _, v in lines))
        progress = await self.batches.with_progress(batch)

        def end(stored: BatchObject) -> BatchObject | None:
            if stored.final:
                return None
            update: dict[str, Any] = {
                "status": ending,
                f"{ending}_at": now(),
                "output_file_id": output_id,
                "error_file_id": error_id,
                "request_counts": progress.request_counts,
                "usage": progress.usage,
            }
            return stored.model_copy(update=update)

        ended = await self.batches.update(self.batch_id, end)
        if ended is not None:
            counts = ended.request_counts
            log.info("batch %s %s: %d of %d requests completed, %d failed", self.batch_id, ended.status,
                     counts.completed, counts.total, counts.failed)  # fmt: skip

    # -- helpers ----------------------------------------------------------------------

    async def _load(self) -> BatchObject | None:
        try:
            return await self.batches.get(self.batch_id)
        except ApiError:
            return None  # expired or never was: nothing to run

    async def _input(self, batch: BatchObject) -> str | None:
        try:
            data = await self.files.content(batch.input_file_id)
        except ApiError:
            await self._fail("input_file_missing", f"input file {batch.input_file_id!r} was deleted before it ran")
            return None
        return data.decode(errors="replace")

    async def _fail(self, code: str, message: str) -> None:
        errors = BatchErrors(data=[BatchLineError(code=code, message=message, param="input_file_id")])

        def fail(stored: BatchObject) -> BatchObject | None:
            if stored.final:
                return None
            return stored.model_copy(update={"status": "failed", "failed_at": now(), "errors": errors})

        await self.batches.update(self.batch_id, fail)

    async def _not_done(self, requests: list[Request]) -> list[Request]:
        out, err = await self.batches.results(self.batch_id)
        done = set(out) | {key.removeprefix("id:") for key in err if key.startswith("id:")}
        bad_lines = {key for key in err if key.startswith("line:")}
        return [r for r in requests if r.custom_id not in done and f"line:{r.line}" not in bad_lines]

    async def _submitted(self) -> dict[str, str]:
        jobs = await self.client.connection.hgetall(self.client.keys.batch_jobs(self.batch_id))
        return {as_text(k): as_text(v) for k, v in jobs.items()}

    async def _cancel_queued(self) -> None:
        out, err = await self.batches.results(self.batch_id)
        for custom_id, job_id in (await self._submitted()).items():
            if custom_id in out or f"id:{custom_id}" in err:
                continue
            try:
                await (await self.client.job(job_id)).cancel()
            except HostlerError:
                pass  # its record is gone: nothing left to cancel

    async def _expire_rest(self, requests: list[Request]) -> None:
        await self._cancel_queued()
        for request in await self._not_done(requests):
            job_id = job_id_for(self.batch_id, request.custom_id)
            message = "the request did not run before the batch's 24 h completion window closed"
            record = {"id": f"batch_req_{job_id}", "custom_id": request.custom_id, "response": None,
                      "error": {"code": EXPIRED_CODE, "message": message}}  # fmt: skip
            await self.batches.record(self.batch_id, output=False, field=f"id:{request.custom_id}",
                                      line=json.dumps(record), tokens=(0, 0))  # fmt: skip


def _requests_of(text: str, endpoint: str) -> list[Request]:
    """The input's requests for this endpoint, without asking which models exist: a resumed batch
    must not turn its requests into bad lines because no host has reported yet after a restart."""
    requests, _ = parse_lines(text.splitlines())
    return [r for r in requests if r.url == endpoint]


def _bad_record(batch_id: str, line: BadLine) -> str:
    record = {
        "id": f"batch_req_{batch_id}-line{line.line}",
        "custom_id": line.custom_id,
        "response": None,
        "error": {"code": line.code, "message": f"line {line.line}: {line.message}", "line": line.line},
    }
    return json.dumps(record)


def _error_line(key: str, order: dict[str, int]) -> float:
    if key.startswith("line:"):
        return int(key.removeprefix("line:"))
    return order.get(key.removeprefix("id:"), math.inf)


def _window_closed(batch: BatchObject) -> bool:
    return batch.expires_at is not None and time.time() >= batch.expires_at


def _joined(lines: Iterable[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()
