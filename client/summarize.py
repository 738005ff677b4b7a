"""Summaries of documents of any length: split by token count, summarize, summarize again.

A document that fits the model's context is summarized in one job. A longer one is split
at paragraph, then sentence, then word boundaries into pieces that token-count jobs have
measured to fit; each piece is summarized and the joined piece summaries are summarized
again, as often as needed (map-reduce). Job ids are derived from the model, the settings
and the text, so a rerun after a crash finds every finished job instead of repeating it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hostler.schemas import CompletionResult, LoadParams, ModelSpec

from ._async import AsyncClient
from ._errors import ContextExceeded, HostlerError
from ._progress import Progress

DEFAULT_INSTRUCTION = "Summarize the following text in a few sentences. Keep names, numbers and conclusions."
# Room kept free beside a piece for the chat template and the instruction's own wording.
TEMPLATE_MARGIN = 48
_PARAGRAPHS = re.compile(r"\n\s*\n")
_SENTENCES = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    path: str | None = None


@dataclass
class DocumentSummary:
    id: str
    path: str | None
    summary: str
    pieces: int
    levels: int
    document_tokens: int
    usage: dict[str, int] = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    error: str | None = None

    def record(self) -> dict[str, Any]:
        return asdict(self)


def pack(units: Sequence[str], counts: Sequence[int], budget: int, separator: str) -> list[str]:
    """Joins consecutive units into chunks whose counted tokens stay within budget.

    A unit over the budget on its own becomes its own chunk, to be split further.
    """
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for unit, count in zip(units, counts, strict=True):
        if current and used + count > budget:
            chunks.append(separator.join(current))
            current, used = [], 0
        current.append(unit)
        used += count
    if current:
        chunks.append(separator.join(current))
    return chunks


def split_units(text: str) -> tuple[list[str], str]:
    """The next finer units of a text and how to join them: paragraphs, sentences, words."""
    for pattern, separator in ((_PARAGRAPHS, "\n\n"), (_SENTENCES, " ")):
        units = [u for u in pattern.split(text.strip()) if u.strip()]
        if len(units) > 1:
            return units, separator
    words = text.split()
    if len(words) > 1:
        half = len(words) // 2
        return [" ".join(words[:half]), " ".join(words[half:])], " "
    return [text], " "


class Summarizer:
    """Map-reduce summaries on one model, with a bound on the jobs in flight."""

    def __init__(
        self,
        client: AsyncClient,
        model: str,
        *,
        context: int,
        max_tokens: int = 128,
        instruction: str = DEFAULT_INSTRUCTION,
        max_in_flight: int = 16,
        wait_when_full: float | None = None,
        **params: Any,
    ) -> None:
        self.client = client
        self.model = model
        self.context = context
        self.max_tokens = max_tokens
        self.instruction = instruction
        self.params = {"temperature": 0.0, **params}
        # How long a piece waits for room on a full queue (the client's timeout unless given);
        # past it, the document fails with a QueueFull that says how long it waited.
        self.wait_when_full = client.timeout if wait_when_full is None else wait_when_full
        self._slots = asyncio.Semaphore(max_in_flight)
        self._bos: int | None = None
        self._budget: int | None = None
        self._settings = json.dumps([model, instruction, max_tokens, self.params], sort_keys=True)

    async def budget(self) -> int:
        """Tokens a piece may have so that template, instruction, piece and summary fit."""
        if self._budget is None:
            self._bos = await self._count("")
            instruction = await self._count(self.instruction) - self._bos
            self._budget = self.context - self.max_tokens - instruction - TEMPLATE_MARGIN
            if self._budget < 32:
                raise ValueError(
                    f"context of {self.context} tokens leaves {self._budget} for text after a {self.max_tokens}-token "
                    "summary and the instruction; load the model with a larger n_ctx or ask for a shorter summary"
                )
        return self._budget

    async def summarize(self, document: Document) -> DocumentSummary:
        budget = await self.budget()
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        total = await self._count(document.text)
        text, levels, first_pieces = document.text, 0, 0
        while True:
            pieces = await self.pieces(text, budget)
            levels += 1
            first_pieces = first_pieces or len(pieces)
            summaries = await asyncio.gather(*(self._summarize_piece(p, budget, usage) for p in pieces))
            if len(summaries) == 1:
                return DocumentSummary(
                    document.id, document.path, summaries[0].strip(), first_pieces, levels, total, usage
                )
            text = "\n\n".join(s.strip() for s in summaries)

    async def pieces(self, text: str, budget: int) -> list[str]:
        """The text split into pieces that each count at most budget tokens."""
        if await self._count(text) <= budget:
            return [text]
        units, separator = split_units(text)
        if len(units) == 1:
            return units  # one word longer than the budget: the job will say so
        bos = self._bos or 0
        counts = await asyncio.gather(*(self._count(u) for u in units))
        chunks = pack(units, [c - bos for c in counts], budget, separator)
        if len(chunks) == 1:
            chunks = pack(units, [c - bos for c in counts], budget // 2, separator)
        found: list[str] = []
        for chunk in chunks:
            found.extend(await self.pieces(chunk, budget))  # counted again: packing only estimates
        return found

    async def _summarize_piece(self, piece: str, budget: int, usage: dict[str, int]) -> str:
        messages = [{"role": "system", "content": self.instruction}, {"role": "user", "content": piece}]
        try:
            result = await self._job(messages)
        except ContextExceeded:
            # The template took more than the margin: split this piece and summarize the halves.
            halves, separator = split_units(piece)
            if len(halves) == 1:
                raise
            parts = await asyncio.gather(*(self._summarize_piece(h, budget, usage) for h in halves))
            return separator.join(parts)
        usage["prompt_tokens"] += result.usage.prompt_tokens
        usage["completion_tokens"] += result.usage.completion_tokens
        return result.text

    async def _job(self, messages: list[dict[str, str]]) -> CompletionResult:
        job_id = "sum-" + hashlib.sha256((self._settings + json.dumps(messages)).encode()).hexdigest()[:40]
        async with self._slots:
            handle = await self.client.submit(
                self.model,
                messages=messages,
                job_id=job_id,
                max_tokens=self.max_tokens,
                wait_when_full=self.wait_when_full,
                **self.params,
            )
            result = await handle.result(timeout=self.client.timeout)
        assert isinstance(result, CompletionResult)
        return result

    async def _count(self, text: str) -> int:
        async with self._slots:
            return await self.client.count_tokens(self.model, text)


async def model_context(client: AsyncClient, model: str) -> int:
    """The context the model is (or will be) loaded with: its load spec's n_ctx, else the default."""
    blob = await client.connection.get(client.keys.spec(model))
    if blob is not None:
        return ModelSpec.model_validate_json(blob).params.n_ctx
    return LoadParams().n_ctx


def read_documents(paths: Sequence[Path]) -> list[Document]:
    """Text and markdown files, directories searched for them; a document's id is its path."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in {".txt", ".md", ".markdown"}))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    return [Document(id=str(p), text=p.read_text(encoding="utf-8", errors="replace"), path=str(p)) for p in found]


async def summarize_documents(
    client: AsyncClient,
    model: str,
    documents: Sequence[Document],
    *,
    context: int | None = None,
    max_tokens: int = 128,
    instruction: str = DEFAULT_INSTRUCTION,
    max_in_flight: int = 16,
    progress: Progress | None = None,
    **params: Any,
) -> AsyncIterator[DocumentSummary]:
    """Summaries as documents finish (not in input order); the library form of `hostler summarize`."""
    context = context if context is not None else await model_context(client, model)
    summarizer = Summarizer(
        client, model, context=context, max_tokens=max_tokens, instruction=instruction,
        max_in_flight=max_in_flight, **params,
    )  # fmt: skip
    await summarizer.budget()
    tasks = [asyncio.create_task(_summarize_one(summarizer, d)) for d in documents]
    try:
        for next_done in asyncio.as_completed(tasks):
            summary = await next_done
            if progress is not None:
                failed = summary.error is not None
                progress.update(done=int(not failed), failed=int(failed), tokens=summary.usage["completion_tokens"])
            yield summary
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _summarize_one(summarizer: Summarizer, document: Document) -> DocumentSummary:
    # One document that cannot be summarized is reported; the others go on.
    try:
        return await summarizer.summarize(document)
    except HostlerError as exc:
        return DocumentSummary(document.id, document.path, "", 0, 0, 0, error=str(exc))
