"""`Session`: one client connection as the node sees it.

It owns the connection's `broker.amqp.connection.Connection` machine and turns
its events into node operations: metadata changes (declare, bind, delete) go
through the node's metadata log and are answered after commit; publishes are
routed on the local metadata view and handed to queue leaders; acks, rejects,
cancels and closes settle or return deliveries.

Events of one connection are handled in order (AMQP requires replies in order
per channel); only metadata changes wait, and while they do the reader does
not read, which is also the flow control for a client flooding declares.
Deliveries arrive from queue leaders at any time and are appended to the
machine's output; `wake_writer` tells the shell's writer task to drain it.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import trio

from broker import auth
from broker.alarms import block_reason
from broker.amqp import codec, spec
from broker.amqp.connection import (
    Acked,
    ChannelClosed,
    ChannelOpened,
    Connection,
    ConnectionClosed,
    ConnectionOpened,
    ConsumerCancelled,
    MethodReceived,
    PublishBuffered,
    PublishReceived,
    QosChanged,
    Rejected,
    TxCommitted,
)
from broker.arguments import (
    check_consume_arguments,
    check_declare_arguments,
    check_quorum_declare,
    is_quorum,
    parse_expiration,
    server_named_refusal,
)
from broker.message import Message
from broker.queue_client import ConsumerRef, QueueClient, QueueRef, QueueUnavailable, by_queue
from cluster import metadata as md
from cluster.logtext import PEER_REASON_LIMIT, RefusalLog, peer_text

if TYPE_CHECKING:
    from broker.node import Node

log = logging.getLogger("leveret.connection")
# A password-guessing client refuses in a loop: the first refusal is logged at once, then
# one line per interval saying how many were suppressed (issue 12: 200 refused logins
# with 4 KB names grew the log by megabytes).
_login_refusals = RefusalLog(log)

# Output queued for a client beyond which no more deliveries are pushed to it
# until its writer drains: the bound between queues and a slow socket.
OUTPUT_HIGH_WATER = 1 << 20
# A consumer of a replicated queue that fails over is attached to the new leader within
# this many seconds (or cancelled), trying again this often.
REATTACH_TIMEOUT = 30.0
REATTACH_RETRY = 0.2

# Direct reply-to (RabbitMQ's pseudo-queue): replies go straight to the requester's channel.
REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_TO_PREFIX = REPLY_TO + "."


def _server_named_queue() -> str:
    return "amq.gen-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


class Session:
    def __init__(self, node: "Node", conn_id: str, peer: tuple[str, int], local: tuple[str, int]) -> None:
        self.node = node
        self.id = conn_id
        self.peer = peer
        self.local = local
        self.username: str | None = None
        self.vhost: str = "/"
        self.conn = Connection(
            self._authenticate,
            self._open_vhost,
            server_properties=node.server_properties,
            channel_max=node.settings.channel_max,
            frame_max=node.settings.frame_max,
            heartbeat=node.settings.heartbeat,
            max_message_size=node.settings.max_message_size,
            defer_close_ok=True,
        )
        self.on_output: Callable[[], None] = lambda: None
        self.opened = False
        self.closed = False
        # channel -> consumer tag -> its queue (to detach consumers when the channel goes)
        self.consumers: dict[int, dict[str, QueueClient]] = defaultdict(dict)
        self.publishing = False
        self.connected_at = node.now_ms()
        # exchange -> the router's token for it when this connection last checked a publish
        # to it (permissions, internal): RabbitMQ looks the exchange up on every publish, so
        # one deleted and declared again (perhaps internal now) is checked again.
        self._write_checks_ok: dict[str, object] = {}
        self._throttled = False
        self._login_refused = False
        # A queue this connection published to whose consumers fall behind (publisher flow).
        self.congested: QueueClient | None = None
        # channel -> (token, consumer tag) of its direct reply-to consumer
        self.reply_consumers: dict[int, tuple[str, str]] = {}
        # channel -> the queue it declared last (an empty queue name refers to it)
        self._declared: dict[int, str] = {}
        # (channel, consumer tag) -> how it consumed (to attach it again after a failover)
        self._consume_args: dict[tuple[int, str], _ConsumeArgs] = {}

    # ------------------------------------------------------------------ machine callbacks

    def _authenticate(self, username: str, password: str) -> str | None:
        user = self.node.metadata.user(username)
        outcome = auth.authenticate(
            user, username, password,
            mechanism=self.conn.mechanism or "PLAIN",
            local_address=self.local[0],  # the node's end, as rabbit_net:is_loopback(Sock)
            loopback_users=self.node.settings.loopback_users,
        )
        if isinstance(outcome, auth.LoginRefused):
            _login_refusals.warning("login", "connection %s (%s:%s): %s", self.id, self.peer[0], self.peer[1],
                                    outcome.log_message)
            self._login_refused = True
            return outcome.log_message
        self.username = outcome.username
        return None

    def _open_vhost(self, username: str, vhost: str) -> str | None:
        meta = self.node.metadata
        if meta.vhost(vhost) is None:
            return f"vhost {vhost} not found"
        refused = auth.check_vhost_access(username, vhost, vhost_exists=True,
                                          permission=meta.permission(vhost, username))
        if refused is not None:
            return f"access to vhost '{vhost}' refused for user '{username}'"
        return None

    # ------------------------------------------------------------------ node-facing

    def can_deliver(self, channel: int, tag: str) -> bool:
        if self.conn.pending_output >= OUTPUT_HIGH_WATER:
            self._throttled = True
            return False
        return self.conn.can_deliver(channel, tag)

    def room(self, channel: int, tag: str) -> int | None:
        """Deliveries the consumer may still be given (None: no limit), 0 while the output
        backs up: what a replicated queue reserves against while its deliveries commit."""
        if self.conn.pending_output >= OUTPUT_HIGH_WATER:
            self._throttled = True
            return 0
        return self.conn.room(channel, tag)

    def output_drained(self) -> None:
        """The writer emptied the output: queues held back by `can_deliver` may push again."""
        if self._throttled:
            self._throttled = False
            now = self.node.now_ms()
            for queues in list(self.consumers.values()):
                for queue in set(queues.values()):
                    queue.dispatch(now)

    def deliver(self, channel: int, tag: str, handle: Any, m: Message, redelivered: bool) -> int | None:
        raw = m.raw_properties
        if raw is None:
            raw = m.raw_properties = codec.encode_properties(m.properties)
        dtag = self.conn.deliver(channel, tag, handle, m.exchange, m.routing_key, raw, m.body, redelivered)
        if dtag is not None:
            self.on_output()
        return dtag

    def cancel_consumer(self, channel: int, tag: str) -> None:
        """The queue went away: tell the client (basic.cancel) and forget the consumer. A
        replicated queue that is failing over has not gone: its consumer is attached again
        to the new leader, unless it asked for x-cancel-on-ha-failover (RabbitMQ's rule)."""
        queue = self.consumers.get(channel, {}).pop(tag, None)
        args = self._consume_args.get((channel, tag))
        record = self.node.metadata.queue(self.vhost, queue.name) if queue is not None else None
        if (args is not None and record is not None and record.replicated and not args.cancel_on_failover
                and not self.closed and self.node.start_soon(self._reattach, channel, tag, record.name, args)):
            return
        self._consume_args.pop((channel, tag), None)
        self.conn.cancel_consumer(channel, tag)
        self.on_output()

    async def _reattach(self, channel: int, tag: str, name: str, args: "_ConsumeArgs") -> None:
        """Consume again from a replicated queue's new leader (REATTACH_TIMEOUT at most)."""
        node = self.node
        with trio.move_on_after(REATTACH_TIMEOUT):
            while not self.closed and self.conn.channel(channel) is not None \
                    and self._consume_args.get((channel, tag)) is args:
                await node.mirroring.until_served(self.vhost, name)
                queue = node.queue(self.vhost, name)
                if queue is None:
                    break  # deleted meanwhile
                ref = ConsumerRef(self, channel, tag, args.no_ack)
                refused = await queue.add_consumer(ref, args.priority, args.exclusive)
                if refused is None:
                    if self.closed or self.conn.channel(channel) is None:
                        now = node.now_ms()
                        queue.remove_consumer(self, channel, tag, now)
                        queue.consumers_gone(now)
                        return
                    self.consumers[channel][tag] = queue
                    queue.dispatch(node.now_ms())
                    return
                await trio.sleep(REATTACH_RETRY)
        if self._consume_args.pop((channel, tag), None) is not None and not self.closed:
            self.conn.cancel_consumer(channel, tag)
            self.on_output()

    def tick(self, now: float) -> None:
        self.handle_sync(self.conn.tick(now))
        self.on_output()

    def force_close(self, code: int, text: str) -> None:
        self.handle_sync(self.conn.close(code, text))
        self.on_output()

    # ------------------------------------------------------------------ events

    async def handle(self, events: list[Any]) -> None:
        # One clock reading for the batch of events one read produced (read again
        # after anything that waits): queues take `now_ms` for TTL and x-expires.
        now = self.node.now_ms()
        for ev in events:
            t = type(ev)
            if t is PublishReceived:
                if self.node.alarms:
                    await self.held_by_alarm()
                    now = self.node.now_ms()
                self._publish(ev, now)
            elif t is PublishBuffered:
                self._publish_buffered(ev.publish)
            elif t is Acked:
                self._settle(ev.handles, now)
            elif t is MethodReceived:
                await self._method(ev.channel, ev.method)
                now = self.node.now_ms()
            else:
                await self._other(ev)
                now = self.node.now_ms()
        self.on_output()

    async def held_by_alarm(self) -> None:
        """A publish while a resource alarm is raised (complete, or begun with its content
        still to come): tell the client (connection.blocked) and take nothing more from
        it until the alarm clears, as RabbitMQ does."""
        self.publishing = True
        while self.node.alarms:
            self.conn.block(block_reason(self.node.alarms))
            self.on_output()
            await self.node.alarms_cleared.wait()

    def handle_sync(self, events: list[Any]) -> None:
        """Events produced outside the reader (closes forced by the node, timeouts)."""
        for ev in events:
            t = type(ev)
            if t is ChannelClosed:
                self._channel_closed(ev)
            elif t is ConnectionClosed:
                self._connection_closed(ev)
            elif t is Rejected:
                self._rejected(ev)

    async def _other(self, ev: Any) -> None:
        t = type(ev)
        if t is Rejected:
            self._rejected(ev)
        elif t is ConsumerCancelled:
            self._consumer_cancelled(ev.channel, ev.consumer_tag)
        elif t is QosChanged:
            for queue in set(self.consumers.get(ev.channel, {}).values()):
                queue.dispatch(self.node.now_ms())
        elif t is ChannelClosed:
            self._channel_closed(ev)
        elif t is ConnectionOpened:
            self.opened = True
            self.vhost = ev.vhost
            self.username = ev.username
            self.node.register(self)
            log.info("connection %s (%s:%s -> %s:%s): user '%s' authenticated and granted access to vhost '%s'",
                     self.id, self.peer[0], self.peer[1], self.local[0], self.local[1],
                     peer_text(ev.username), peer_text(ev.vhost))
        elif t is ConnectionClosed:
            self._connection_closed(ev)
            if self.conn.close_ok_owed:
                # RabbitMQ answers close-ok once the connection's exclusive queues are gone, so
                # a connection declaring the same queue right after never finds it locked.
                await self.node.delete_exclusive_queues(self.id)
                self.conn.send_close_ok()
        elif t is TxCommitted:
            self._commit(ev)
        elif t is ChannelOpened:
            pass

    # ------------------------------------------------------------------ failures

    def _fail(self, channel: int, refusal: Any, method: spec.Method) -> None:
        if isinstance(refusal, auth.AccessRefused):
            code, text = refusal.reply_code, refusal.reply_text
        else:
            code, text = refusal.code, refusal.text
        if code in spec.HARD_ERRORS:
            self.handle_sync(self.conn.close(code, text, method.CLASS_ID, method.METHOD_ID))
        else:
            self.handle_sync(self.conn.close_channel(channel, code, text, method.CLASS_ID, method.METHOD_ID))

    def _refuse(self, channel: int, code: int, detail: str, method: spec.Method) -> None:
        self._fail(channel, md.Refusal(code, spec.reply_text(code, detail)), method)

    def _check(self, channel: int, checks: tuple[Any, ...], method: spec.Method) -> bool:
        assert self.username is not None
        refused = auth.check_all(self.username, self.node.metadata.permission(self.vhost, self.username), checks)
        if refused is not None:
            self._fail(channel, refused, method)
            return False
        return True

    # ------------------------------------------------------------------ publish

    def _admit(self, ev: PublishReceived) -> "_Admitted | None":
        """RabbitMQ's checks of a publish (exchange, permissions, properties), in its order,
        then its routing: (properties as stored, expiry in ms, the queues it goes to, or
        None for a direct reply-to); None when a check failed (the channel or connection
        is being closed)."""
        node = self.node
        method = ev.method
        exchange = method.exchange
        vhost = self.vhost
        channel = ev.channel
        current = node.router.exchange_ref(vhost, exchange) if exchange else _DEFAULT_EXCHANGE
        checked = self._write_checks_ok.get(exchange)
        if checked is None or checked is not current:
            if checked is not None:
                del self._write_checks_ok[exchange]
            # An exchange checked before and deleted since skips to 404: its permissions were checked.
            if (checked is None or current is not None) and not self._check(
                    channel, auth.checks_for_publish(vhost, exchange), method):
                return None
            if current is None:
                self._refuse(channel, spec.NOT_FOUND, f"no exchange '{exchange}' in vhost '{vhost}'", method)
                return None
            if node.router.is_internal(vhost, exchange):
                self._refuse(channel, spec.ACCESS_REFUSED,
                             f"cannot publish to internal exchange '{exchange}' in vhost '{vhost}'", method)
                return None
            self._write_checks_ok[exchange] = current
        if method.immediate:
            self._refuse(channel, spec.NOT_IMPLEMENTED, "immediate=true", method)
            return None
        if exchange:
            refused = self._topic_refusal(exchange, method.routing_key, auth.Access.WRITE)
            if refused is not None:
                self._fail(channel, refused, method)
                return None
        props = ev.properties
        if props.user_id is not None and props.user_id != self.username and not self._may_impersonate():
            self._refuse(channel, spec.PRECONDITION_FAILED,
                         f"user_id property set to '{props.user_id}' but authenticated user was "
                         f"'{self.username}'", method)
            return None
        expiration_ms = None
        if props.expiration is not None:
            parsed = parse_expiration(props.expiration)
            if isinstance(parsed, md.Refusal) or hasattr(parsed, "code"):
                self._fail(channel, parsed, method)
                return None
            expiration_ms = parsed
        headers = props.headers
        extra_keys: tuple[str, ...] = ()
        if headers and ("CC" in headers or "BCC" in headers):
            extra_keys = tuple(_routing_keys(headers.get("CC"))) + tuple(_routing_keys(headers.get("BCC")))
            if "BCC" in headers:
                headers = dict(headers)
                del headers["BCC"]
                props = _replace_headers(props, headers)
        if props.reply_to == REPLY_TO:
            reply = self.reply_consumers.get(channel)
            if reply is None:
                self._refuse(channel, spec.PRECONDITION_FAILED, "fast reply consumer does not exist", method)
                return None
            props = _replace_reply_to(props, f"{REPLY_TO}.{reply[0]}")
        if not exchange and method.routing_key.startswith(REPLY_TO_PREFIX):
            return props, expiration_ms, None
        return props, expiration_ms, node.router.route(vhost, exchange, method.routing_key, headers, extra_keys).queues

    def _publish(self, ev: PublishReceived, now: int | None = None) -> None:
        admitted = self._admit(ev)
        if admitted is None:
            return
        props, expiration_ms, queues = admitted
        if queues is None:
            self._publish_reply(ev, props, expiration_ms)
        else:
            self._enqueue(ev, self._message(ev, props, expiration_ms), queues, now, None)

    def _publish_buffered(self, ev: PublishReceived) -> None:
        """A publish inside a transaction: checked and routed now, as RabbitMQ does (its
        channel keeps the routed queue names with the message and delivers at tx.commit, to
        the queues by those names that exist then); `ev.routed` carries the decision to
        `_commit`."""
        admitted = self._admit(ev)
        if admitted is None:
            return
        props, expiration_ms, queues = admitted
        if queues is None:
            ev.routed = _BufferedReply(props, expiration_ms)
        else:
            ev.routed = _BufferedPublish(self._message(ev, props, expiration_ms), queues)

    def _commit(self, ev: TxCommitted) -> None:
        commit = _TxCommit(self, ev.channel)
        for p in ev.publishes:
            routed = p.routed
            if type(routed) is _BufferedPublish:
                self._enqueue(p, routed.message, routed.queues, None, commit)
            elif type(routed) is _BufferedReply:
                self._publish_reply(p, routed.properties, routed.expiration_ms)
        for s in ev.settlements:
            if type(s) is Acked:
                self._settle(s.handles)
            else:
                self._rejected(s)
        commit.all_submitted()

    def _message(self, ev: PublishReceived, props: spec.BasicProperties, expiration_ms: int | None) -> Message:
        method = ev.method
        # Positional: this runs once per publish, and keywords cost a dict per call.
        return Message(
            method.exchange, method.routing_key, props, ev.body,
            props.delivery_mode == 2,  # persistent
            props.priority or 0,
            expiration_ms,
            ev.raw_properties if props is ev.properties else None,
            self.node.next_message_id(),
        )

    def _enqueue(self, ev: PublishReceived, message: Message, queues: Collection[str], now: int | None,
                 tx: "_TxCommit | None") -> None:
        node = self.node
        method = ev.method
        channel = ev.channel
        self.publishing = True
        seq = ev.seq
        if not queues:
            if method.mandatory:
                self.conn.send_content(
                    channel,
                    spec.BasicReturn(reply_code=spec.NO_ROUTE, reply_text="NO_ROUTE",
                                     exchange=method.exchange, routing_key=method.routing_key),
                    message.raw_properties if message.raw_properties is not None
                    else codec.encode_properties(message.properties),
                    ev.body,
                )
            if seq is not None:
                self.conn.confirm(channel, seq)
            return
        if now is None:
            now = node.now_ms()
        if len(queues) > 1:
            node.hold_dead_letters()
            try:
                self._enqueue_each(channel, message, queues, now, seq, tx)
            finally:
                node.release_dead_letters()
        else:
            self._enqueue_each(channel, message, queues, now, seq, tx)

    def _enqueue_each(self, channel: int, message: Message, queues: Collection[str], now: int,
                      seq: int | None, tx: "_TxCommit | None") -> None:
        node = self.node
        vhost = self.vhost
        if seq is None and tx is None:
            for q in queues:
                queue = node.queue(vhost, q)
                if queue is not None:
                    queue.publish(message, now, None)
                    if queue.backlogged():
                        self.congested = queue
            return
        tracker: Callable[[bool], None]
        if tx is not None:
            tx.expect(len(queues))
            tracker = tx
        else:
            assert seq is not None
            tracker = _ConfirmTracker(self, channel, seq, len(queues))
        for q in queues:
            queue = node.queue(vhost, q)
            if queue is None:
                # Deleted since it was routed to: nothing to confirm against, as RabbitMQ.
                tracker(True)
            else:
                queue.publish(message, now, tracker)
                if queue.backlogged():
                    self.congested = queue

    def _publish_reply(self, ev: PublishReceived, props: spec.BasicProperties, expiration_ms: int | None) -> None:
        """Direct reply-to: straight to the requester's reply consumer, never through a queue.
        A requester that is gone means the reply is dropped (or returned if mandatory)."""
        method = ev.method
        target = self.node.reply_consumers.get(method.routing_key[len(REPLY_TO_PREFIX):])
        message = Message(
            "", method.routing_key, props, ev.body,
            persistent=props.delivery_mode == 2, priority=props.priority or 0, expiration_ms=expiration_ms,
            raw_properties=ev.raw_properties if props is ev.properties else None,
            id=self.node.next_message_id(),
        )
        delivered = False
        if target is not None:
            session, channel, tag = target
            delivered = session.deliver(channel, tag, None, message, False) is not None
        if not delivered and method.mandatory:
            self.conn.send_content(
                ev.channel,
                spec.BasicReturn(reply_code=spec.NO_ROUTE, reply_text="NO_ROUTE",
                                 exchange="", routing_key=method.routing_key),
                message.raw_properties if message.raw_properties is not None else codec.encode_properties(props),
                ev.body,
            )
        if ev.seq is not None:
            self.conn.confirm(ev.channel, ev.seq)

    def _topic_refusal(self, exchange: str, routing_key: str, access: auth.Access) -> Any:
        """Topic permissions (RabbitMQ's check_*_permitted_on_topic): only for topic exchanges
        the user has a topic permission on."""
        meta = self.node.metadata
        record = meta.exchange(self.vhost, exchange)
        if record is None or record.type != "topic" or self.username is None:
            return None
        permissions = meta.topic_permissions(self.vhost, self.username, exchange)
        if not permissions:
            return None
        return auth.check_topic_access(self.username, permissions[0], vhost=self.vhost, exchange=exchange,
                                       exchange_type="topic", routing_key=routing_key, access=access)

    def _may_impersonate(self) -> bool:
        # RabbitMQ's check_user_id_header: only users tagged "impersonator" may publish
        # with another user's name in user_id (the shovel and federation case).
        user = self.node.metadata.user(self.username or "")
        return user is not None and "impersonator" in user.tags

    # ------------------------------------------------------------------ settlement

    def _settle(self, handles: tuple[Any, ...], now: int | None = None) -> None:
        if now is None:
            now = self.node.now_ms()
        for queue, ref, seqs in self._by_queue(handles):
            queue.settle(ref, seqs, now)

    def _rejected(self, ev: Rejected) -> None:
        self.conn.release_held(ev)
        now = self.node.now_ms()
        for queue, ref, seqs in self._by_queue(ev.handles):
            if ev.requeue:
                queue.requeue(ref, seqs, now)
            else:
                queue.reject(ref, seqs, now)

    def _by_queue(self, handles: tuple[Any, ...]) -> list[tuple[QueueClient, QueueRef, tuple[int, ...]]]:
        """Delivery handles by the queue they came from, as it is now: those of a queue since
        deleted (or deleted and declared again) are dropped, there is nothing to settle."""
        out = []
        queue_at = self.node.queue
        for ref, seqs in by_queue(handles).items():
            queue = queue_at(ref.vhost, ref.name)
            if queue is not None and queue.holds(ref):
                out.append((queue, ref, seqs))
        return out

    def _drop_reply_consumer(self, channel: int, tag: str | None = None) -> None:
        reply = self.reply_consumers.get(channel)
        if reply is not None and (tag is None or reply[1] == tag):
            del self.reply_consumers[channel]
            self.node.reply_consumers.pop(reply[0], None)

    def _consumer_cancelled(self, channel: int, tag: str) -> None:
        self._drop_reply_consumer(channel, tag)
        self._consume_args.pop((channel, tag), None)
        queue = self.consumers.get(channel, {}).pop(tag, None)
        if queue is not None:
            now = self.node.now_ms()
            queue.remove_consumer(self, channel, tag, now)
            queue.consumers_gone(now)

    def _channel_closed(self, ev: ChannelClosed) -> None:
        self._drop_reply_consumer(ev.channel)
        self._declared.pop(ev.channel, None)
        for key in [k for k in self._consume_args if k[0] == ev.channel]:
            del self._consume_args[key]
        now = self.node.now_ms()
        consumed = set(self.consumers.pop(ev.channel, {}).values())
        for queue in consumed:
            queue.remove_channel(self, ev.channel)
        for queue, ref, seqs in self._by_queue(ev.unacked):
            queue.requeue(ref, seqs, now)
        for queue in consumed:
            queue.consumers_gone(now)

    def _connection_closed(self, ev: ConnectionClosed) -> None:
        if self.closed:
            return
        self.closed = True
        for channel in list(self.consumers):
            self._channel_closed(ChannelClosed(channel, (), ()))
        if self.opened:
            self.node.unregister(self, release_exclusive=not self.conn.close_ok_owed)
            if not ev.by_client:
                log.info("closing connection %s: %s", self.id, peer_text(ev.text, PEER_REASON_LIMIT))
        elif not ev.by_client and not self._login_refused:
            # One line per refused client, as RabbitMQ logs a failed handshake (a bad
            # header, a frame error, a timeout); a refused login was logged already.
            log.warning("closing connection %s (%s:%s -> %s:%s) during the handshake: %s",
                        self.id, self.peer[0], self.peer[1], self.local[0], self.local[1],
                        peer_text(ev.text, PEER_REASON_LIMIT))

    # ------------------------------------------------------------------ methods

    async def _method(self, channel: int, m: spec.Method) -> None:
        handler = _METHODS.get(type(m))
        if handler is None:
            self._refuse(channel, spec.NOT_IMPLEMENTED, f"{m.NAME} is not implemented", m)
            return
        if type(m) in _NAMES_A_QUEUE and not m.queue:  # type: ignore[attr-defined]
            expanded = self._last_declared_queue(channel, m)
            if expanded is None:
                return
            m = expanded
        await handler(self, channel, m)

    def _last_declared_queue(self, channel: int, m: Any) -> spec.Method | None:
        """AMQP's shortcut: an empty queue name means the queue this channel declared last
        (and, binding, an empty routing key means that name too), as RabbitMQ's
        expand_queue_name_shortcut / expand_routing_key_shortcut."""
        last = self._declared.get(channel)
        if last is None:
            self._fail(channel, md.Refusal(spec.NOT_FOUND, "NOT_FOUND - no previously declared queue"), m)
            return None
        if isinstance(m, (spec.QueueBind, spec.QueueUnbind)) and not m.routing_key:
            return dataclasses.replace(m, queue=last, routing_key=last)
        return dataclasses.replace(m, queue=last)

    async def _propose(self, channel: int, cmd: md.Command, method: spec.Method) -> Any:
        """Commit a metadata change; None if it was refused (the channel is then closed)."""
        result = await self.node.propose_metadata(cmd)
        if isinstance(result, md.Refusal):
            if result.code == spec.INTERNAL_ERROR:
                # The cluster could not commit it (no majority reachable from this node): the
                # channel goes, not the connection, so the client may retry on a new channel.
                self.handle_sync(self.conn.close_channel(channel, result.code, result.text,
                                                         method.CLASS_ID, method.METHOD_ID))
                return None
            self._fail(channel, result, method)
            return None
        return result

    def _reply(self, channel: int, nowait: bool, method: spec.Method) -> None:
        if not nowait:
            self.conn.send_method(channel, method)

    async def _exchange_declare(self, channel: int, m: spec.ExchangeDeclare) -> None:
        vhost = self.vhost
        refused = None if m.passive else md.exchange_type_refusal(m.type)
        if refused is None:
            refused = auth.default_exchange_refusal(m.exchange)
        if refused is not None:
            self._fail(channel, refused, m)
            return
        if m.passive:
            if self.node.metadata.exchange(vhost, m.exchange) is None:
                self._refuse(channel, spec.NOT_FOUND, f"no exchange '{m.exchange}' in vhost '{vhost}'", m)
                return
            self._reply(channel, m.nowait, spec.ExchangeDeclareOk())
            return
        ae = (m.arguments or {}).get("alternate-exchange")
        checks = auth.checks_for_exchange_declare(
            vhost, m.exchange, passive=False,
            creates=self.node.metadata.exchange(vhost, m.exchange) is None,
            alternate_exchange=ae if isinstance(ae, str) else None)
        if not self._check(channel, checks, m):
            return
        cmd = md.DeclareExchange(vhost, m.exchange, m.type, m.durable, m.auto_delete, m.internal,
                                 dict(m.arguments or {}))
        if await self._propose(channel, cmd, m) is not None:
            self._reply(channel, m.nowait, spec.ExchangeDeclareOk())

    async def _exchange_delete(self, channel: int, m: spec.ExchangeDelete) -> None:
        vhost = self.vhost
        if not self._check(channel, auth.checks_for_exchange_delete(vhost, m.exchange), m):
            return
        if await self._propose(channel, md.DeleteExchange(vhost, m.exchange, m.if_unused), m) is not None:
            self._write_checks_ok.pop(m.exchange, None)
            self._reply(channel, m.nowait, spec.ExchangeDeleteOk())

    async def _exchange_bind(self, channel: int, m: Any) -> None:
        unbind = isinstance(m, spec.ExchangeUnbind)
        vhost = self.vhost
        if not self._check(channel, auth.checks_for_bind(vhost, m.source, auth.Kind.EXCHANGE, m.destination), m):
            return
        refused = self._topic_refusal(m.source, m.routing_key, auth.Access.READ)
        if refused is not None:
            self._fail(channel, refused, m)
            return
        cls = md.Unbind if unbind else md.Bind
        cmd = cls(vhost, m.source, m.destination, "exchange", m.routing_key, dict(m.arguments or {}), self.id)
        if await self._propose(channel, cmd, m) is not None:
            self._reply(channel, m.nowait, spec.ExchangeUnbindOk() if unbind else spec.ExchangeBindOk())

    def _owned_check(self, channel: int, q: md.QueueRecord, m: spec.Method) -> bool:
        if q.exclusive_owner is not None and q.exclusive_owner != self.id:
            self._refuse(channel, spec.RESOURCE_LOCKED,
                         f"cannot obtain exclusive access to locked queue '{q.name}' in vhost '{q.vhost}'. "
                         "It could be originally declared on another connection or the exclusive property "
                         "value does not match that of the original declaration.", m)
            return False
        return True

    async def _queue_declare(self, channel: int, m: spec.QueueDeclare) -> None:
        vhost = self.vhost
        node = self.node
        name = m.queue
        if m.passive and name == REPLY_TO:
            self._declare_ok(channel, m.nowait, name, None)
            return
        if m.passive:
            q = node.metadata.queue(vhost, name)
            if q is None:
                self._refuse(channel, spec.NOT_FOUND, f"no queue '{name}' in vhost '{vhost}'", m)
                return
            if not self._owned_check(channel, q, m):
                return
            # A passive declare is a use too: it renews x-expires (RabbitMQ's queue stat call).
            await self._declare_ok(channel, m, name)
            return
        server_named = not name
        if server_named:
            refusal = server_named_refusal(m.arguments)
            if refusal is not None:
                self._fail(channel, refusal, m)
                return
            name = _server_named_queue()
        refused = md.reserved_queue_name_refusal(name, server_named)
        if refused is not None:
            self._fail(channel, refused, m)
            return
        # RabbitMQ's order: the name and permissions first; an existing queue is then held to
        # equivalence (or exclusivity) with what was asked, and only a new queue's arguments
        # are validated.
        creates = node.metadata.queue(vhost, name) is None
        dlx = (m.arguments or {}).get("x-dead-letter-exchange")
        checks = auth.checks_for_queue_declare(
            vhost, name, passive=False, creates=creates,
            dead_letter_exchange=dlx if isinstance(dlx, str) else None)
        if not self._check(channel, checks, m):
            return
        if creates:
            refusal = check_declare_arguments(name, vhost, m.arguments) or check_quorum_declare(
                name, vhost, m.arguments, durable=m.durable and not m.exclusive, exclusive=m.exclusive,
                auto_delete=m.auto_delete)
            if refusal is not None:
                self._fail(channel, refusal, m)
                return
        # An exclusive queue dies with its connection, so it is never durable (RabbitMQ:
        # `durable andalso not exclusive`).
        durable = m.durable and not m.exclusive
        arguments = dict(m.arguments or {})
        home = node.home_for(vhost, name, arguments, m.exclusive)
        group, replicas = node.mirroring.plan_new(vhost, name, arguments, home, m.exclusive)
        if replicas:
            # A replicated queue starts led by its plan's first replica, which need not be
            # the home (ha-mode nodes may leave the home out).
            home = replicas[0]
        cmd = md.DeclareQueue(vhost, name, durable, m.auto_delete, self.id if m.exclusive else None,
                              arguments, home, "quorum" if is_quorum(arguments) else "classic", server_named,
                              group, replicas)
        if await self._propose(channel, cmd, m) is None:
            return
        await node.mirroring.until_served(vhost, name)
        await self._declare_ok(channel, m, name)

    async def _declare_ok(self, channel: int, m: spec.QueueDeclare, name: str) -> None:
        node = self.node
        _, counts = await node.ask_queue(self.vhost, name, lambda c: c.counts(node.now_ms(), touch=True))
        if counts is not None:
            if isinstance(counts, QueueUnavailable):
                self._refuse(channel, spec.NOT_FOUND, counts.text, m)
                return
        # The channel's most recently declared queue, for the empty-name shortcut.
        self._declared[channel] = name
        self._reply(channel, m.nowait, spec.QueueDeclareOk(
            queue=name,
            message_count=counts.messages if counts else 0,
            consumer_count=counts.consumers if counts else 0))

    async def _queue_bind(self, channel: int, m: Any) -> None:
        unbind = isinstance(m, spec.QueueUnbind)
        vhost = self.vhost
        queue = m.queue
        if not self._check(channel, auth.checks_for_bind(vhost, m.exchange, auth.Kind.QUEUE, queue), m):
            return
        refused = self._topic_refusal(m.exchange, m.routing_key, auth.Access.READ)
        if refused is not None:
            self._fail(channel, refused, m)
            return
        cls = md.Unbind if unbind else md.Bind
        cmd = cls(vhost, m.exchange, queue, "queue", m.routing_key, dict(m.arguments or {}), self.id)
        if await self._propose(channel, cmd, m) is not None:
            if unbind:
                self.conn.send_method(channel, spec.QueueUnbindOk())
            else:
                self._reply(channel, m.nowait, spec.QueueBindOk())

    def _queue_for(self, channel: int, name: str, m: spec.Method) -> QueueClient | None:
        vhost = self.vhost
        q = self.node.metadata.queue(vhost, name)
        queue = self.node.queue(vhost, name) if q is not None else None
        if q is None or queue is None:
            self._refuse(channel, spec.NOT_FOUND, f"no queue '{name}' in vhost '{vhost}'", m)
            return None
        if not self._owned_check(channel, q, m):
            return None
        return queue

    async def _queue_purge(self, channel: int, m: spec.QueuePurge) -> None:
        if not self._check(channel, auth.checks_for_queue_purge(self.vhost, m.queue), m):
            return
        if self._queue_for(channel, m.queue, m) is None:
            return
        node = self.node
        _, count = await node.ask_queue(self.vhost, m.queue, lambda c: c.purge(node.now_ms()))
        if count is None:
            count = 0  # deleted meanwhile
        if isinstance(count, QueueUnavailable):
            self._refuse(channel, spec.NOT_FOUND, count.text, m)
            return
        self._reply(channel, m.nowait, spec.QueuePurgeOk(message_count=count))

    async def _queue_delete(self, channel: int, m: spec.QueueDelete) -> None:
        vhost = self.vhost
        if not self._check(channel, auth.checks_for_queue_delete(vhost, m.queue), m):
            return
        q = self.node.metadata.queue(vhost, m.queue)
        if q is None:
            # Idempotent, as RabbitMQ 3.x: deleting a missing queue succeeds with 0 messages.
            self._reply(channel, m.nowait, spec.QueueDeleteOk(message_count=0))
            return
        if not self._owned_check(channel, q, m):
            return
        node = self.node
        queue, counts = await node.ask_queue(vhost, m.queue, lambda c: c.counts(node.now_ms(), touch=False))
        count = 0
        if queue is not None:
            if isinstance(counts, QueueUnavailable):
                self._refuse(channel, spec.NOT_FOUND, counts.text, m)
                return
            # rabbit_amqqueue_process checks if-empty before if-unused. Its is_empty is the
            # ready count: unacked deliveries do not make a queue non-empty.
            if m.if_empty and counts.messages:
                self._refuse(channel, spec.PRECONDITION_FAILED,
                             f"queue '{m.queue}' in vhost '{vhost}' not empty", m)
                return
            if m.if_unused and counts.consumers:
                self._refuse(channel, spec.PRECONDITION_FAILED, f"queue '{m.queue}' in vhost '{vhost}' in use", m)
                return
            count = counts.messages
        if await self._propose(channel, md.DeleteQueue(vhost, m.queue, self.id), m) is not None:
            self._reply(channel, m.nowait, spec.QueueDeleteOk(message_count=count))

    async def _basic_consume(self, channel: int, m: spec.BasicConsume) -> None:
        vhost = self.vhost
        tag = m.consumer_tag
        if m.queue == REPLY_TO:
            if not m.no_ack:
                self._refuse(channel, spec.PRECONDITION_FAILED, "reply consumer cannot acknowledge", m)
                return
            if channel in self.reply_consumers:
                self._refuse(channel, spec.PRECONDITION_FAILED, "reply consumer already set", m)
                return
            token = base64.urlsafe_b64encode(os.urandom(18)).decode()
            self.reply_consumers[channel] = (token, tag)
            self.node.reply_consumers[token] = (self, channel, tag)
            self._reply(channel, m.nowait, spec.BasicConsumeOk(consumer_tag=tag))
            return
        if not self._check(channel, auth.checks_for_consume(vhost, m.queue), m):
            return
        queue = self._queue_for(channel, m.queue, m)
        if queue is None:
            return
        refusal = (check_consume_arguments(m.queue, vhost, m.arguments)
                   or self._global_qos_refusal(channel, m.queue))
        if refusal is not None:
            self._fail(channel, refusal, m)
            return
        priority = (m.arguments or {}).get("x-priority", 0)
        ref = ConsumerRef(self, channel, tag, m.no_ack)
        # The queue checks exclusivity (its consumers decide) as it adds the consumer.
        found, refused = await self.node.ask_queue(
            vhost, m.queue, lambda c: c.add_consumer(ref, priority if isinstance(priority, int) else 0, m.exclusive))
        if found is None:
            self._refuse(channel, spec.NOT_FOUND, f"no queue '{m.queue}' in vhost '{vhost}'", m)
            return
        queue = found
        if isinstance(refused, QueueUnavailable):
            self._refuse(channel, spec.NOT_FOUND, refused.text, m)
            return
        if refused is not None:
            self._fail(channel, refused, m)
            return
        if self.conn.channel(channel) is None:
            # The channel closed while a queue on another node took the consumer: nothing
            # will cancel it later.
            now = self.node.now_ms()
            queue.remove_consumer(self, channel, tag, now)
            queue.consumers_gone(now)
            return
        self.consumers[channel][tag] = queue
        cancel_on_failover = (m.arguments or {}).get("x-cancel-on-ha-failover") is True
        self._consume_args[(channel, tag)] = _ConsumeArgs(
            priority if isinstance(priority, int) else 0, m.exclusive, m.no_ack, cancel_on_failover)
        self._reply(channel, m.nowait, spec.BasicConsumeOk(consumer_tag=tag))
        queue.dispatch(self.node.now_ms())

    def _global_qos_refusal(self, channel: int, queue: str) -> md.Refusal | None:
        """RabbitMQ's quorum queues take no channel-wide prefetch: consuming from one on a
        channel with basic.qos global=true in force is a 540 connection error
        (rabbit_quorum_queue:consume, global_qos_not_supported_for_queue_type). Celery
        and kombu detect quorum queues and leave global qos off because of it."""
        ch = self.conn.channel(channel)
        record = self.node.metadata.queue(self.vhost, queue)
        if ch is None or not ch.channel_prefetch or record is None or not is_quorum(record.arguments):
            return None
        return md.Refusal(spec.NOT_IMPLEMENTED, spec.reply_text(
            spec.NOT_IMPLEMENTED, f"queue '{queue}' in vhost '{self.vhost}' does not support global qos"))

    async def _basic_get(self, channel: int, m: spec.BasicGet) -> None:
        if not self._check(channel, auth.checks_for_consume(self.vhost, m.queue), m):
            return
        if self._queue_for(channel, m.queue, m) is None:
            return
        node = self.node
        queue, got = await node.ask_queue(self.vhost, m.queue, lambda c: c.get(node.now_ms(), m.no_ack))
        if queue is None:
            self._refuse(channel, spec.NOT_FOUND, f"no queue '{m.queue}' in vhost '{self.vhost}'", m)
            return
        if isinstance(got, QueueUnavailable):
            self._refuse(channel, spec.NOT_FOUND, got.text, m)
            return
        if got is None:
            self.conn.send_method(channel, spec.BasicGetEmpty())
            return
        msg = got.message
        raw = msg.raw_properties
        if raw is None:
            raw = msg.raw_properties = codec.encode_properties(msg.properties)
        tag = self.conn.get_ok(channel, None if m.no_ack else (got.ref, got.seq), m.no_ack, msg.exchange,
                               msg.routing_key, got.remaining, raw, msg.body, got.redelivered)
        if tag is None and not m.no_ack:
            queue.requeue(got.ref, (got.seq,), self.node.now_ms())


def _routing_keys(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [v.decode() if isinstance(v, bytes) else v for v in value if isinstance(v, (str, bytes))]
    return []


def _replace_headers(props: spec.BasicProperties, headers: dict[str, Any]) -> spec.BasicProperties:
    return dataclasses.replace(props, headers=headers)


def _replace_reply_to(props: spec.BasicProperties, reply_to: str) -> spec.BasicProperties:
    return dataclasses.replace(props, reply_to=reply_to)


# What `_write_checks_ok` keeps for the default exchange, which always exists.
_DEFAULT_EXCHANGE = object()


@dataclass(frozen=True, slots=True)
class _BufferedPublish:
    """A transactional publish as routed when it arrived."""

    message: Message
    queues: Collection[str]


@dataclass(frozen=True, slots=True)
class _BufferedReply:
    """A transactional direct reply-to publish, checked when it arrived."""

    properties: spec.BasicProperties
    expiration_ms: int | None


# What `_admit` returns: the properties as they will be stored, the expiry in ms, and the
# queues the publish is routed to (None for a direct reply-to).
_Admitted = tuple[spec.BasicProperties, "int | None", "Collection[str] | None"]


@dataclass(frozen=True, slots=True)
class _ConsumeArgs:
    priority: int
    exclusive: bool
    no_ack: bool
    cancel_on_failover: bool


class _TxCommit:
    """tx.commit-ok once every queue took the transaction's publishes (durable ones after
    their fsync), as RabbitMQ does; a queue refusing one (reject-publish) fails the commit
    with RabbitMQ's "partial tx completion"."""

    __slots__ = ("session", "channel", "waiting", "ok", "submitted")

    def __init__(self, session: Session, channel: int) -> None:
        self.session = session
        self.channel = channel
        self.waiting = 0
        self.ok = True
        self.submitted = False

    def expect(self, count: int) -> None:
        self.waiting += count

    def __call__(self, accepted: bool) -> None:
        self.ok = self.ok and accepted
        self.waiting -= 1
        self._maybe_done()

    def all_submitted(self) -> None:
        self.submitted = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if not self.submitted or self.waiting:
            return
        session = self.session
        if self.ok:
            session.conn.tx_commit_ok(self.channel)
        else:
            session.handle_sync(session.conn.close_channel(
                self.channel, spec.PRECONDITION_FAILED, "PRECONDITION_FAILED - partial tx completion",
                spec.TxCommit.CLASS_ID, spec.TxCommit.METHOD_ID))
        session.on_output()


class _ConfirmTracker:
    """Confirms one publish once every queue it was routed to accepted it (nack if any refused)."""

    __slots__ = ("session", "channel", "seq", "waiting", "ok")

    def __init__(self, session: Session, channel: int, seq: int, waiting: int) -> None:
        self.session = session
        self.channel = channel
        self.seq = seq
        self.waiting = waiting
        self.ok = True

    def __call__(self, accepted: bool) -> None:
        self.ok = self.ok and accepted
        self.waiting -= 1
        if self.waiting == 0:
            conn = self.session.conn
            if self.ok:
                conn.confirm(self.channel, self.seq)
            else:
                conn.reject(self.channel, self.seq)
            self.session.on_output()


# Methods whose empty queue name means the channel's most recently declared queue.
_NAMES_A_QUEUE = frozenset({spec.QueueBind, spec.QueueUnbind, spec.QueuePurge, spec.QueueDelete,
                            spec.BasicGet, spec.BasicConsume})

_METHODS: dict[type, Callable[..., Any]] = {
    spec.ExchangeDeclare: Session._exchange_declare,
    spec.ExchangeDelete: Session._exchange_delete,
    spec.ExchangeBind: Session._exchange_bind,
    spec.ExchangeUnbind: Session._exchange_bind,
    spec.QueueDeclare: Session._queue_declare,
    spec.QueueBind: Session._queue_bind,
    spec.QueueUnbind: Session._queue_bind,
    spec.QueuePurge: Session._queue_purge,
    spec.QueueDelete: Session._queue_delete,
    spec.BasicConsume: Session._basic_consume,
    spec.BasicGet: Session._basic_get,
}
