"""The HTTP listeners: the management API (`http`) and the Prometheus metrics
(`http/prometheus`), each served by Hypercorn's trio worker in the node's nursery.

The socket is bound here, before Hypercorn starts, so that a port in use stops the node
at start with an error naming the port and the setting (Hypercorn's own bind would fail
later, inside its task, with a bare errno), and so that port 0 reports the port chosen.
The rates the API shows are sampled by the node itself (`broker.queue_rates`), listener
or not, so that any node can show the rates of the queues another one leads.
"""

from __future__ import annotations

import errno
import logging
import socket
from typing import TYPE_CHECKING

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app
from starlette.types import ASGIApp

from broker.management.routes import management_app
from broker.management.prometheus import prometheus_app

if TYPE_CHECKING:
    from broker.node import Node

log = logging.getLogger("leveret.management")

# Listener protocol (as rabbitmqctl status names it) -> the setting that chooses its port.
PORT_SETTINGS = {"http": "management_port", "http/prometheus": "prometheus_port"}


def listening_socket(host: str, port: int, protocol: str) -> socket.socket:
    """A listening TCP socket on host:port ("" = every interface, IPv6 and IPv4 where possible).
    A failure is an OSError that names the port and the setting."""
    try:
        if not host and socket.has_dualstack_ipv6():
            sock = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        where = f"{host or '*'}:{port}"
        raise OSError(exc.errno or errno.EADDRINUSE,
                      f"{protocol} listener cannot listen on {where} ({PORT_SETTINGS[protocol]}): "
                      f"{exc.strerror or exc}") from exc
    sock.setblocking(False)
    return sock


def _hypercorn_config() -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("leveret.management.http")
    config.graceful_timeout = 1.0
    return config


async def serve_http(node: "Node", protocol: str, host: str, port: int,
                     *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve `protocol`'s application until cancelled; reports the bound port when listening."""
    sock = listening_socket(host, port, protocol)
    bound = sock.getsockname()[1]
    app: ASGIApp
    async with trio.open_nursery() as nursery:
        if protocol == "http":
            app, _api = management_app(node)
        else:
            app = prometheus_app(node)
        sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
        await nursery.start(lambda task_status: worker_serve(wrap_app(app, 0, "asgi"), _hypercorn_config(),
                                                            sockets=sockets, task_status=task_status))
        log.info("%s listener started on %s:%d", protocol, host or "[::]", bound)
        task_status.started(bound)
