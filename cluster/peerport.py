"""The node's peer port: one listener for `leveretctl` and for the other cluster nodes.

Every connection first runs the acceptor side of the cookie handshake
(`cluster.peer`). The hello names the connector's purpose, and the
authenticated link goes to the handler registered for it: control links to
the control RPC (`cluster.control`), peer links to the transport's inbound
side (`cluster.transport.PeerTransport.serve_inbound`). A purpose with no
handler, another protocol version or another cookie is refused inside the
handshake, so no handler ever sees an unauthenticated or unexpected link.

Refusals are logged here, once per attempt and rate-limited per kind and
address (`RefusalLog`): a node with the wrong cookie retries in a loop, and
every string in the line (the name it announced, its reason) is the peer's
choice, so it goes through `peer_text`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Final

import trio

from cluster.logtext import RefusalLog, peer_text
from cluster.peer import DEFAULT_FRAME_MAX, HandshakeRefused, PeerLink, Purpose, RefusalKind, accept_peer

log = logging.getLogger("leveret.peer")

HANDSHAKE_TIMEOUT: Final = 10.0

LinkHandler = Callable[[PeerLink], Awaitable[None]]


def describe_refusal(refusal: HandshakeRefused) -> str:
    """One line for an operator: what went wrong, with the peer's words escaped."""
    if refusal.cookie_differs:
        if refusal.by_peer:
            return ("the cookie differs: authentication failed (rejected by the remote node), "
                    "please check the cookie")
        return "the cookie differs: authentication failed (the peer could not prove this node's cookie)"
    return peer_text(refusal.reason)


def log_refused_attempt(refusals: RefusalLog, refusal: HandshakeRefused) -> None:
    """The acceptor's line for a refused handshake (rate-limited per kind and address)."""
    if refusal.kind is RefusalKind.CLOSED and refusal.peer_name is None:
        # Closed before saying hello: a port probe, not an authentication attempt.
        log.debug("peer port connection from %s closed before the handshake", refusal.peer_address)
        return
    host = (refusal.peer_address or "?").rsplit(":", 1)[0]
    refusals.warning(f"{refusal.kind.value} {host}", "connection attempt from node '%s' (%s) refused: %s",
                     peer_text(refusal.peer_name), refusal.peer_address, describe_refusal(refusal))


async def serve_connection(
    handlers: Mapping[Purpose, LinkHandler],
    refusals: RefusalLog,
    stream: trio.abc.Stream,
    *,
    cookie: str,
    node_name: str,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    max_frame_size: int = DEFAULT_FRAME_MAX,
) -> None:
    """Authenticate one accepted connection and hand it to its purpose's handler; closes it after."""
    outcome = await accept_peer(stream, cookie=cookie, local_name=node_name, timeout=handshake_timeout,
                                max_frame_size=max_frame_size, purposes=frozenset(handlers))
    if isinstance(outcome, HandshakeRefused):
        log_refused_attempt(refusals, outcome)
        return
    try:
        await handlers[outcome.purpose](outcome)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(outcome.stream)


async def serve_peer_port(
    handlers: Mapping[Purpose, LinkHandler],
    *,
    cookie: str,
    node_name: str,
    host: str | None,
    port: int,
    handshake_timeout: float = HANDSHAKE_TIMEOUT,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on the peer port (all addresses when `host` is empty) and serve every connection
    with the handler of its purpose; reports the bound port."""
    assert handlers, "a peer port that serves nothing refuses everyone"
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    task_status.started(listeners[0].socket.getsockname()[1])
    refusals = RefusalLog(log)
    await trio.serve_listeners(partial(_serve, handlers, refusals, cookie, node_name, handshake_timeout),
                               listeners)


async def _serve(handlers: Mapping[Purpose, LinkHandler], refusals: RefusalLog, cookie: str, node_name: str,
                 handshake_timeout: float, stream: trio.SocketStream) -> None:
    await serve_connection(handlers, refusals, stream, cookie=cookie, node_name=node_name,
                           handshake_timeout=handshake_timeout)
