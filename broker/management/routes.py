"""The management API's route table (RabbitMQ 3.10's rabbit_mgmt_dispatcher paths and the
methods each takes) and the ASGI application serving it.

Each route's endpoint authenticates the caller, dispatches on the method (405 with an
`Allow` header for one the path does not take, as RabbitMQ's cowboy handlers answer) and
turns an `ApiError` into RabbitMQ's JSON. Path segments reach the routes still
percent-encoded (`_raw_path`): a vhost named "/" is "%2F" in a URL and must stay one segment.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.convertors import CONVERTOR_TYPES, Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from broker.management.api import Call, Handler, ManagementApi
from broker.management.errors import NOT_FOUND, ApiError

if TYPE_CHECKING:
    from broker.node import Node

REALM = 'Basic realm="RabbitMQ Management"'
UI_DIRECTORY = Path(__file__).with_name("www")

# (path, {method: handler}) in rabbit_mgmt_dispatcher's order. docs/openapi.yaml describes
# the same paths and methods (a test holds them equal).
ROUTES: tuple[tuple[str, dict[str, Handler]], ...] = (
    ("/api/overview", {"GET": ManagementApi.overview}),
    ("/api/cluster-name", {"GET": ManagementApi.cluster_name}),
    ("/api/nodes", {"GET": ManagementApi.nodes}),
    ("/api/nodes/{node}", {"GET": ManagementApi.node}),
    ("/api/extensions", {"GET": ManagementApi.extensions}),
    ("/api/definitions", {"GET": ManagementApi.definitions, "POST": ManagementApi.import_definitions}),
    ("/api/definitions/{vhost}", {"GET": ManagementApi.definitions, "POST": ManagementApi.import_definitions}),
    ("/api/connections", {"GET": ManagementApi.connections}),
    ("/api/vhosts/{vhost}/connections", {"GET": ManagementApi.vhost_connections}),
    ("/api/connections/{connection}", {"GET": ManagementApi.connection, "DELETE": ManagementApi.close_connection}),
    ("/api/connections/{connection}/channels", {"GET": ManagementApi.connection_channels}),
    ("/api/channels", {"GET": ManagementApi.channels}),
    ("/api/vhosts/{vhost}/channels", {"GET": ManagementApi.vhost_channels}),
    ("/api/channels/{channel}", {"GET": ManagementApi.channel}),
    ("/api/consumers", {"GET": ManagementApi.consumers}),
    ("/api/consumers/{vhost}", {"GET": ManagementApi.consumers}),
    ("/api/exchanges", {"GET": ManagementApi.exchanges}),
    ("/api/exchanges/{vhost}", {"GET": ManagementApi.exchanges}),
    ("/api/exchanges/{vhost}/{exchange}", {"GET": ManagementApi.exchange, "PUT": ManagementApi.put_exchange,
                                           "DELETE": ManagementApi.delete_exchange}),
    ("/api/exchanges/{vhost}/{exchange}/bindings/source", {"GET": ManagementApi.exchange_bindings}),
    ("/api/exchanges/{vhost}/{exchange}/bindings/destination", {"GET": ManagementApi.exchange_bindings}),
    ("/api/exchanges/{vhost}/{exchange}/publish", {"POST": ManagementApi.publish}),
    ("/api/queues", {"GET": ManagementApi.queues}),
    ("/api/queues/{vhost}", {"GET": ManagementApi.queues}),
    ("/api/queues/{vhost}/{queue}", {"GET": ManagementApi.queue, "PUT": ManagementApi.put_queue,
                                     "DELETE": ManagementApi.delete_queue}),
    ("/api/queues/{vhost}/{queue}/bindings", {"GET": ManagementApi.queue_bindings}),
    ("/api/queues/{vhost}/{queue}/contents", {"DELETE": ManagementApi.purge_queue}),
    ("/api/queues/{vhost}/{queue}/get", {"POST": ManagementApi.get_messages}),
    ("/api/queues/{vhost}/{queue}/actions", {"POST": ManagementApi.queue_actions}),
    ("/api/bindings", {"GET": ManagementApi.bindings}),
    ("/api/bindings/{vhost}", {"GET": ManagementApi.bindings}),
    ("/api/bindings/{vhost}/e/{source}/{kind:kind}/{destination}",
     {"GET": ManagementApi.bindings_of_pair, "POST": ManagementApi.create_binding}),
    ("/api/bindings/{vhost}/e/{source}/{kind:kind}/{destination}/{props}",
     {"GET": ManagementApi.get_binding, "DELETE": ManagementApi.delete_binding}),
    ("/api/vhosts", {"GET": ManagementApi.vhosts}),
    ("/api/vhosts/{vhost}", {"GET": ManagementApi.vhost, "PUT": ManagementApi.put_vhost,
                             "DELETE": ManagementApi.delete_vhost}),
    ("/api/vhosts/{vhost}/permissions", {"GET": ManagementApi.vhost_permissions}),
    ("/api/vhosts/{vhost}/topic-permissions", {"GET": ManagementApi.vhost_topic_permissions}),
    ("/api/users", {"GET": ManagementApi.users}),
    ("/api/users/without-permissions", {"GET": ManagementApi.users_without_permissions}),
    ("/api/users/bulk-delete", {"POST": ManagementApi.bulk_delete_users}),
    ("/api/users/{user}", {"GET": ManagementApi.user, "PUT": ManagementApi.put_user,
                           "DELETE": ManagementApi.delete_user}),
    ("/api/users/{user}/permissions", {"GET": ManagementApi.user_permissions}),
    ("/api/users/{user}/topic-permissions", {"GET": ManagementApi.user_topic_permissions}),
    ("/api/whoami", {"GET": ManagementApi.whoami}),
    ("/api/permissions", {"GET": ManagementApi.permissions}),
    ("/api/permissions/{vhost}/{user}", {"GET": ManagementApi.permission, "PUT": ManagementApi.put_permission,
                                         "DELETE": ManagementApi.delete_permission}),
    ("/api/topic-permissions", {"GET": ManagementApi.topic_permissions}),
    ("/api/topic-permissions/{vhost}/{user}", {"GET": ManagementApi.topic_permission,
                                               "PUT": ManagementApi.put_topic_permission,
                                               "DELETE": ManagementApi.delete_topic_permission}),
    ("/api/parameters", {"GET": ManagementApi.parameters}),
    ("/api/parameters/{component}", {"GET": ManagementApi.parameters}),
    ("/api/parameters/{component}/{vhost}", {"GET": ManagementApi.parameters}),
    ("/api/parameters/{component}/{vhost}/{name}", {"GET": ManagementApi.parameter,
                                                    "PUT": ManagementApi.put_parameter}),
    ("/api/global-parameters", {"GET": ManagementApi.global_parameters}),
    ("/api/policies", {"GET": ManagementApi.policies}),
    ("/api/policies/{vhost}", {"GET": ManagementApi.policies}),
    ("/api/policies/{vhost}/{name}", {"GET": ManagementApi.policy, "PUT": ManagementApi.put_policy,
                                      "DELETE": ManagementApi.delete_policy}),
    ("/api/vhost-limits", {"GET": ManagementApi.vhost_limits}),
    ("/api/aliveness-test/{vhost}", {"GET": ManagementApi.aliveness}),
    ("/api/health/checks/alarms", {"GET": ManagementApi.check_alarms}),
    ("/api/health/checks/local-alarms", {"GET": ManagementApi.check_alarms}),
    ("/api/health/checks/certificate-expiration/{within}/{unit}",
     {"GET": ManagementApi.check_certificate_expiration}),
    ("/api/health/checks/port-listener/{port}", {"GET": ManagementApi.check_port_listener}),
    ("/api/health/checks/protocol-listener/{protocol}", {"GET": ManagementApi.check_protocol_listener}),
    ("/api/health/checks/virtual-hosts", {"GET": ManagementApi.check_virtual_hosts}),
    ("/api/health/checks/node-is-mirror-sync-critical", {"GET": ManagementApi.check_single_node}),
    ("/api/health/checks/node-is-quorum-critical", {"GET": ManagementApi.check_single_node}),
)


def _endpoint(api: ManagementApi, handlers: dict[str, Handler]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        handler = handlers.get(request.method)
        if handler is None:
            if request.method == "HEAD" and "GET" in handlers:
                handler = handlers["GET"]
            else:
                return Response(status_code=405, headers={"Allow": ", ".join(sorted(handlers))})
        who = api.authenticate(request)
        if isinstance(who, ApiError):
            return _error_response(who)
        call = Call(request, who, dict(request.path_params))
        try:
            return await handler(api, call)
        except ApiError as refusal:
            return _error_response(refusal)

    return endpoint


def _error_response(refusal: ApiError) -> Response:
    headers = {"WWW-Authenticate": REALM} if refusal.status == 401 else None
    return JSONResponse(refusal.body(), status_code=refusal.status, headers=headers)


class _BindingKind(Convertor[str]):
    """Starlette path convertor for the "q" or "e" of a binding path."""

    regex = "[qe]"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def _register_convertors() -> None:
    if "kind" not in CONVERTOR_TYPES:
        register_url_convertor("kind", _BindingKind())


def _raw_path(app: ASGIApp) -> ASGIApp:
    """Routes match the path as sent (percent-encoded): the server decodes %2F to "/", which
    would split the default vhost's name into two segments. Handlers decode each segment."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("raw_path"):
            raw = scope["raw_path"].split(b"?", 1)[0].decode("latin-1")
            scope = {**scope, "path": re.sub(r"/+$", "", raw) or "/"}
        await app(scope, receive, send)

    return wrapped


async def _not_found(request: Request, exc: Exception) -> Response:
    return _error_response(NOT_FOUND)


HTTP_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


def management_app(node: "Node") -> tuple[ASGIApp, ManagementApi]:
    """The API as an ASGI application, and its handlers."""
    _register_convertors()
    api = ManagementApi(node)
    # Every method reaches the endpoint, which answers 405 itself (Starlette's own would
    # answer with text where RabbitMQ sends nothing).
    routes: list[BaseRoute] = [Route(path, _endpoint(api, handlers), methods=HTTP_METHODS)
                               for path, handlers in ROUTES]
    # The web UI: static files, served as they are (no build step), after every API route.
    routes.append(Mount("/", StaticFiles(directory=UI_DIRECTORY, html=True)))
    app = Starlette(routes=routes, exception_handlers={404: _not_found})
    return _raw_path(app), api
