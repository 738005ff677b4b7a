"""The gateway's OpenAPI document, read without a running gateway: every route is in it with its
request body, answers and error statuses in OpenAI's error shape; /docs renders it."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from fastapi.routing import APIRoute
from hostler.worker.gateway.app import create_app
from hostler.worker.gateway.openapi import DOCS
from hostler.worker.gateway.settings import GatewaySettings
from pydantic import SecretStr
from starlette.testclient import TestClient

# No Redis is needed to describe the API (the app's lifespan, which would use it, is not run).
NOWHERE = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return create_app(GatewaySettings(redis_url=NOWHERE)).openapi()


def test_every_route_is_described_with_its_body_answers_and_errors(document: dict[str, Any]) -> None:
    app = create_app(GatewaySettings(redis_url=NOWHERE))
    routes = {(method.lower(), r.path) for r in app.routes if isinstance(r, APIRoute) for method in r.methods}
    assert routes == set(DOCS), "worker/gateway/openapi.py's DOCS must describe every route"
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            responses = operation["responses"]
            assert "200" in responses and "422" not in responses, where
            assert "500" not in responses, f"{where}: a 500 is a bug, never a documented answer"
            if method == "post" and DOCS[(method, path)].body is not None:
                assert operation["requestBody"]["required"], where
                assert {"400", "413"} <= set(responses), where
            assert ("401" in responses) == (path != "/health"), where
            for status, response in responses.items():
                if status != "200" and path != "/health":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (where, status)
            declared = [p["name"] for p in operation.get("parameters", []) if p["in"] == "path"]
            assert declared == [part[1:-1] for part in path.split("/") if part.startswith("{")], where
    generation = document["paths"]["/v1/chat/completions"]["post"]
    assert {"400", "401", "404", "413", "429", "503", "504"} <= set(generation["responses"])
    assert set(generation["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    chat_body = document["components"]["schemas"]["ChatCompletionRequest"]
    assert chat_body["properties"]["seed"]["anyOf"][0]["minimum"] == -1
    upload = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert list(upload) == ["multipart/form-data"]


def test_a_fuzzer_can_read_every_operation(document: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_dict(document)
    labels = {operation.ok().label for operation in schema.get_all_operations()}
    assert labels == {f"{method.upper()} {path}" for method, path in DOCS}


def test_docs_and_the_document_need_no_key_while_the_api_does() -> None:
    app = create_app(GatewaySettings(redis_url=NOWHERE, api_keys=(SecretStr("k"),)))
    http = TestClient(app)
    docs = http.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert http.get("/openapi.json").json()["info"]["title"] == "hostler gateway"
    refused = http.get("/v1/batches")
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
