"""A worker's embedding jobs in flight: served one packed decode per loop pass, between steps.

An embedding job's inputs are checked when it is claimed (context, vocabulary, dimensions),
then embedded a decode at a time, oldest job first, while the generations in flight go on
stepping: a job of thousands of texts delays each generation's next token by one decode,
never by the whole job. Vectors go on the wire as EmbeddingResult's base64 float32.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from hostler.schemas import EmbeddingJob, EmbeddingResult, ErrorCode, Usage, encode_vector
from hostler.worker.engines.protocol import EmbeddingOutput, EmbeddingTask, SlotEngine

from .ending import JobEnds
from .events import JobEvents
from .jobstore import Claimed


@dataclass(eq=False)
class EmbeddingRun:
    claimed: Claimed
    job: EmbeddingJob
    publisher: JobEvents
    task: EmbeddingTask


def embedding_result(model: str, output: EmbeddingOutput) -> EmbeddingResult:
    return EmbeddingResult(
        model=model,
        dimensions=output.dimensions,
        pooling=output.pooling,
        data=[encode_vector(vector) for vector in output.vectors],
        usage=Usage(prompt_tokens=output.prompt_tokens, completion_tokens=0),
    )


class Embeddings:
    """Embedding jobs claimed and not yet ended, oldest first."""

    def __init__(self) -> None:
        self._runs: deque[EmbeddingRun] = deque()

    def __len__(self) -> int:
        return len(self._runs)

    def __iter__(self) -> Iterator[EmbeddingRun]:
        return iter(list(self._runs))

    def start(self, engine: SlotEngine, claimed: Claimed, job: EmbeddingJob, publisher: JobEvents) -> None:
        """Checks the job's inputs in the engine (raising what the job fails with) and queues it."""
        task = engine.start_embedding(job.inputs, job.dimensions)
        self._runs.append(EmbeddingRun(claimed, job, publisher, task))

    def current(self) -> EmbeddingRun:
        return self._runs[0]

    def drop(self, run: EmbeddingRun) -> None:
        """Takes a run off (finished, failed or abandoned) and lets the engine free what it held."""
        self._runs.remove(run)
        run.task.close()

    def step(self, model: str, ends: JobEnds, *, stopping_now: bool) -> None:
        """One packed decode of the oldest job; it ends when its last input is embedded.

        `stopping_now` (a second SIGTERM) cancels the job instead of decoding on.
        """
        run = self.current()
        if run.claimed.lost or stopping_now:
            # Taken from this worker while it was frozen (someone else's now), or the worker must stop.
            self.drop(run)
            if not run.claimed.lost:
                ends.cancel(run.claimed, run.publisher, ErrorCode.CANCELED, "the worker was stopped")
            return
        try:
            run.task.step()
            if run.task.done:
                result = embedding_result(model, run.task.result())
                self.drop(run)
                ends.succeed(run.claimed, run.publisher, result)
        except Exception as exc:  # noqa: BLE001 - one bad job must not take the worker down
            self.drop(run)
            ends.failed(run.claimed, run.publisher, exc)
