"""A small management API client on the standard library (urllib), for the tests: every
answer comes back as (status, decoded JSON or None, headers), whatever the status."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote


def q(name: str) -> str:
    """A name as one path segment ("/" is %2F)."""
    return quote(name, safe="")


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: dict[str, str]
    text: str


@dataclass
class Api:
    base_url: str
    user: str = "guest"
    password: str = "guest"

    def as_user(self, user: str, password: str) -> "Api":
        return Api(self.base_url, user, password)

    def request(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
                headers: dict[str, str] | None = None, auth: bool = True) -> Reply:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.base_url + path, method=method, data=data)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return _reply(resp.status, resp.read(), dict(resp.headers))
        except urllib.error.HTTPError as err:
            return _reply(err.code, err.read(), dict(err.headers))

    def get(self, path: str, **kw: Any) -> Reply:
        return self.request("GET", path, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("PUT", path, {} if body is None else body, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.request("POST", path, {} if body is None else body, **kw)

    def delete(self, path: str, **kw: Any) -> Reply:
        return self.request("DELETE", path, **kw)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON of a request that must succeed (2xx)."""
        reply = self.request(method, path, body)
        assert 200 <= reply.status < 300, (method, path, reply.status, reply.text)
        return reply.body


def _reply(status: int, data: bytes, headers: dict[str, str]) -> Reply:
    text = data.decode("utf-8", errors="replace")
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    return Reply(status, body, {k.lower(): v for k, v in headers.items()}, text)
