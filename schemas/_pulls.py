"""Pulls through Redis: `client.pull` asks a host agent to download a model from the hub.

The client SUBSCRIBEs to the pull's channel, then pushes a PullRequest on the host's pull
list (`Keys.pulls`). The agent downloads with the same code as `hostler models pull` and
publishes PullEvents on the channel; it also keeps the latest one under `Keys.pull_state`,
so a client that missed a message can read where the pull is. The last event is done or error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ._jobs import MODEL_ID_PATTERN


class PullRequest(BaseModel):
    """What to download, as `hostler models pull` takes it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pull_id: str = Field(pattern=r"^[0-9a-f]{32}$", description="Names the pull's channel and state key.")
    repo: str = Field(min_length=3, max_length=200, description="The hub repo, OWNER/NAME.")
    file: str | None = Field(None, max_length=500, description="The GGUF file to fetch.")
    quant: str | None = Field(None, max_length=50, description="Pick the GGUF whose name holds this, e.g. Q4_K_M.")
    revision: str = Field("main", min_length=1, max_length=200, description="Branch, tag or commit.")
    model_id: str | None = Field(None, pattern=MODEL_ID_PATTERN, description="The id to install it under.")
    requested_at: float = Field(description="Unix time the client asked.")


class PullResult(BaseModel):
    """A finished pull: the model is on the host's disk and in its report."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str
    host: str
    path: str = Field(description="The model's folder on the host.")
    files: list[str] = Field(description="The files downloaded, as named in the repo.")
    size_bytes: int = Field(ge=0)
    already: bool = Field(False, description="The same files were there already; nothing was downloaded.")


class PullProgressEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["progress"] = "progress"
    host: str
    file: str = Field(description="The file being downloaded.")
    file_done: int = Field(ge=0)
    file_total: int | None = Field(None, ge=0)
    done: int = Field(ge=0, description="Bytes of every file of the pull together.")
    total: int | None = Field(None, ge=0)


class PullDoneEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["done"] = "done"
    result: PullResult


class PullErrorEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["error"] = "error"
    host: str
    message: str = Field(description="What went wrong, for a person.")


PullEvent = Annotated[PullProgressEvent | PullDoneEvent | PullErrorEvent, Field(discriminator="type")]
PULL_EVENT_ADAPTER: TypeAdapter[PullEvent] = TypeAdapter(PullEvent)
