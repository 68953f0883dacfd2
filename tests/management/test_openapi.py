"""docs/openapi.yaml against the server: a valid OpenAPI 3.0 document whose paths and methods
are exactly the route table's, and whose parameterless GETs answer on a live node with a
status the document lists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from broker.management.routes import ROUTES
from tests.management.http import Api

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return yaml.safe_load(DOC.read_text())


def route_table() -> set[tuple[str, str]]:
    # Starlette's "{name:convertor}" is plain "{name}" in OpenAPI.
    return {(re.sub(r"\{(\w+):\w+\}", r"{\1}", path), method.lower()) for path, handlers in ROUTES
            for method in handlers}


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item if method in METHODS}


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)


def test_the_document_describes_exactly_the_routes(document: dict[str, Any]) -> None:
    routes, described = route_table(), documented(document)
    assert routes - described == set(), "served but not described"
    assert described - routes == set(), "described but not served"


def test_every_path_parameter_is_declared(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p.get("in") == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", path)), path


def test_parameterless_gets_answer_as_documented(document: dict[str, Any], api: Api) -> None:
    checked = 0
    for path, item in document["paths"].items():
        if "{" in path or "get" not in item:
            continue
        reply = api.get(path)
        assert str(reply.status) in item["get"]["responses"], (path, reply.status, reply.text)
        assert reply.status == 200, (path, reply.status, reply.text)
        checked += 1
    assert checked >= 20
