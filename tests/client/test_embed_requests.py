"""Embedding requests as jobs and results as OpenAI bodies: what the client, the gateway and
`hostler batch` check before anything is queued, and the vectors' wire format."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest
from hostler.client import InvalidRequest
from hostler.client._requests import embedding_job
from hostler.client.batch import parse_lines
from hostler.schemas import (
    EMBEDDINGS_URL,
    JOB_ADAPTER,
    RESULT_ADAPTER,
    EmbeddingJob,
    EmbeddingResult,
    Usage,
    decode_vector,
    embedding_body,
    encode_vector,
    parse_embedding_body,
)


def test_inputs_become_a_list_of_texts_and_token_ids() -> None:
    assert embedding_job("m", "one text", None).inputs == ["one text"]  # type: ignore[union-attr]
    job = embedding_job("m", ("a", (1, 2), [3]), 8)
    assert isinstance(job, EmbeddingJob) and job.inputs == ["a", [1, 2], [3]] and job.dimensions == 8
    # A list of ints is one input of token ids, as OpenAI reads it.
    assert embedding_job("m", [5, 6, 7], None).inputs == [[5, 6, 7]]  # type: ignore[union-attr]
    parsed = JOB_ADAPTER.validate_json(job.model_dump_json())
    assert parsed == job


@pytest.mark.parametrize(
    ("texts", "words"),
    [
        ([], "input is an empty list"),
        ("", "input is an empty string"),
        (["a", ""], r"input\[1\] is an empty string"),
        (["a", None], r"input\[1\] is null"),
        ([[1, "x"]], r"input\[0\]\[1\] is 'x'"),
        ([[]], "empty list of token ids"),
        ([True], r"input\[0\] is bool"),
        (42, "got int"),
        (["x"] * 2049, "2049 items; the limit is 2048"),
    ],
)
def test_bad_inputs_are_refused_by_index(texts: Any, words: str) -> None:
    with pytest.raises(InvalidRequest, match=words):
        embedding_job("m", texts, None)
    with pytest.raises(ValueError, match=words):
        parse_embedding_body({"model": "m", "input": texts})


def test_dimensions_and_fields_are_checked() -> None:
    with pytest.raises(InvalidRequest, match="dimensions"):
        embedding_job("m", ["a"], 0)
    with pytest.raises(ValueError, match="encoding_format"):
        parse_embedding_body({"model": "m", "input": "a", "encoding_format": "int8"})
    with pytest.raises(ValueError, match="unknown field 'truncate'"):
        parse_embedding_body({"model": "m", "input": "a", "truncate": True})
    with pytest.raises(ValueError, match="dimensions"):
        parse_embedding_body({"model": "m", "input": "a", "dimensions": "8"})
    request = parse_embedding_body({"model": "m", "input": [[1, 2], "b"], "dimensions": 4, "user": "u"})
    assert request.inputs() == [[1, 2], "b"] and request.dimensions == 4


def test_vectors_travel_as_little_endian_float32_base64() -> None:
    vector = [0.6, -0.8, 0.0]
    encoded = encode_vector(vector)
    assert base64.b64decode(encoded) == struct.pack("<3f", *vector)
    assert decode_vector(encoded) == [struct.unpack("<f", struct.pack("<f", v))[0] for v in vector]
    result = EmbeddingResult(
        model="m",
        dimensions=3,
        pooling="mean",
        data=[encoded, encoded],
        usage=Usage(prompt_tokens=7, completion_tokens=0),
    )
    assert RESULT_ADAPTER.validate_json(result.model_dump_json()) == result
    floats = embedding_body(result)
    assert floats["object"] == "list" and floats["model"] == "m"
    assert floats["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert [item["index"] for item in floats["data"]] == [0, 1]
    assert floats["data"][0] == {"object": "embedding", "index": 0, "embedding": result.vectors[0]}
    # OpenAI's base64 is the same bytes: passed on as they are.
    assert embedding_body(result, "base64")["data"][1]["embedding"] == encoded


def test_batch_lines_of_embeddings_are_parsed_and_bad_ones_named() -> None:
    def line(custom_id: str, body: dict[str, Any]) -> str:
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/embeddings", "body": body})

    requests, bad = parse_lines(
        [
            line("a", {"model": "tiny", "input": ["x", "y"], "dimensions": 8}),
            line("b", {"model": "tiny", "input": []}),
            line("c", {"model": "tiny", "input": "z", "encoding_format": "base64"}),
            line("d", {"model": "tiny", "input": "z", "temperature": 0}),
        ],
        model="other",
    )
    assert [(r.custom_id, r.model, r.url) for r in requests] == [
        ("a", "other", EMBEDDINGS_URL),
        ("c", "other", EMBEDDINGS_URL),
    ]
    assert [(b.line, b.custom_id) for b in bad] == [(2, "b"), (4, "d")]
    assert "input is an empty list" in bad[0].message and "Value error" not in bad[0].message
    assert "unknown field 'temperature'" in bad[1].message
