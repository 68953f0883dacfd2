"""The control RPC `leveretctl` speaks: served on the node's peer port, behind the cookie.

A control client connects to the peer port saying its purpose is control
(`Purpose.CONTROL`), both sides prove the cookie (`cluster.peer`'s HMAC
challenge with fresh nonces; the cookie never crosses the wire), then it sends
requests (`PeerLink.call`) whose method names a control operation and whose
args are a msgpack map. A wrong cookie gets the handshake's refusal, one log
line on the node, and a closed socket: no request is ever read from an
unauthenticated link. A control link carries requests only: anything else is
a protocol error, answered with the link's "x" envelope and a close.

Replies are maps, so an operator error carries the exit code rabbitmqctl
would use alongside RabbitMQ's text:

    {"ok": True,  "result": ...}
    {"ok": False, "error": text, "exit_code": n}

A handler that fails unexpectedly is answered with the link's error reply
(`RemoteError` on the client side), which the CLI reports as an internal error.

This module knows nothing of what the operations do (cluster never imports
broker): the node hands `serve_control` an async `handle(method, args)`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import trio

from cluster.logtext import RefusalLog, peer_text
from cluster.peer import (
    FrameTooLarge,
    MalformedFrame,
    PeerClosed,
    PeerLink,
    PeerWireError,
    Purpose,
    Request,
    connect_peer,
)
from cluster.peerport import HANDSHAKE_TIMEOUT, LinkHandler, serve_peer_port

log = logging.getLogger("leveret.control")
_protocol_errors = RefusalLog(log)

# rabbitmqctl's exit codes (sysexits.h).
EX_USAGE: Final = 64
EX_DATAERR: Final = 65
EX_NOUSER: Final = 67
EX_UNAVAILABLE: Final = 69
EX_SOFTWARE: Final = 70
EX_TEMPFAIL: Final = 75

Handle = Callable[[str, Mapping[str, Any]], Awaitable[Any]]


class ControlError(Exception):
    """An operator-facing refusal: RabbitMQ's text and rabbitmqctl's exit code."""

    def __init__(self, text: str, exit_code: int = EX_SOFTWARE) -> None:
        super().__init__(text)
        self.text = text
        self.exit_code = exit_code


async def serve_control(
    handle: Handle,
    *,
    cookie: str,
    node_name: str,
    host: str,
    port: int,
    peer_links: LinkHandler | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on the peer port and serve control requests; reports the bound port.
    With `peer_links` (`PeerTransport.serve_inbound`), cluster peers are served on the
    same port; without it they are refused in the handshake."""
    handlers: dict[Purpose, LinkHandler] = {Purpose.CONTROL: control_link_handler(handle)}
    if peer_links is not None:
        handlers[Purpose.PEER] = peer_links
    await serve_peer_port(handlers, cookie=cookie, node_name=node_name, host=host, port=port,
                          handshake_timeout=HANDSHAKE_TIMEOUT, task_status=task_status)


def control_link_handler(handle: Handle) -> LinkHandler:
    """What `cluster.peerport` runs for an authenticated control link."""

    async def serve(link: PeerLink) -> None:
        await serve_control_link(handle, link)

    return serve


async def serve_control_link(handle: Handle, link: PeerLink) -> None:
    """Answer the requests of one authenticated control link until it closes."""
    try:
        while True:
            item = await link.receive()
            if not isinstance(item, Request):
                _protocol_errors.warning(f"control-message {link.peer_name}",
                                         "control client '%s' sent a message instead of a request; "
                                         "link closed", peer_text(link.peer_name))
                await link.abort("a control link carries requests only")
                return
            try:
                result = await handle(item.method, item.args if isinstance(item.args, Mapping) else {})
                reply: dict[str, Any] = {"ok": True, "result": result}
            except ControlError as exc:
                reply = {"ok": False, "error": exc.text, "exit_code": exc.exit_code}
            except Exception as exc:
                log.exception("control request %s failed", peer_text(item.method))
                await link.reply_error(item, f"{type(exc).__name__}: {exc}")
                continue
            try:
                await link.reply(item, reply)
            except (TypeError, ValueError, OverflowError, FrameTooLarge) as exc:
                # The reply could not be encoded (nothing was sent): a handler bug or an
                # answer beyond the frame limit. Say so rather than end the listener.
                log.error("control request %s: reply not sent: %s", peer_text(item.method), exc)
                await link.reply_error(item, f"the reply could not be sent: {exc}")
    except (PeerClosed, PeerWireError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(link.stream)


# --------------------------------------------------------------------------- client


def client_name() -> str:
    """How a control client introduces itself (rabbitmqctl uses rabbitmqcli-<pid>-rabbit@host)."""
    return f"leveretctl-{os.getpid()}@{socket.gethostname().split('.')[0]}"


async def control_call(
    host: str,
    port: int,
    node_name: str,
    method: str,
    args: Mapping[str, Any],
    *,
    cookie: str,
    connect_timeout: float = 10.0,
) -> dict[str, Any]:
    """Connect, authenticate, send one request; the reply map. Raises OSError,
    trio.TooSlowError, HandshakeFailed (see `cluster.peer.connect_peer`), RemoteError,
    or, if the link breaks before a well-formed reply, PeerClosed, PeerWireError or
    trio.BrokenResourceError."""
    link = await connect_peer(host, port, cookie=cookie, local_name=client_name(),
                              remote_name=node_name, timeout=connect_timeout, purpose=Purpose.CONTROL)
    try:
        reply = await link.call(method, args)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(link.stream)
    if not isinstance(reply, dict):
        raise MalformedFrame(f"control reply is not a map: {reply!r:.80}")
    return reply
