"""The chaos workload: pika publishers and consumers that ride out failover, and the history
they record.

Every client connects with the cluster's three endpoints in one multi-host parameter list
(`pika.BlockingConnection([p1, p2, p3])`, rotated so that client k prefers node k), and on
any connection error connects again through the same list. Heartbeats are short (2 s) so that
a paused or cut-off node's clients notice it within seconds.

Publishers send persistent, mandatory messages to the default exchange with publisher
confirms, one at a time, each with a unique id (message_id and body). Only a basic.ack
confirms an id; a nack, a return (UnroutableError), a closed channel or connection leave it
unconfirmed, and the next message gets a new id. Consumers take every queue with manual acks,
record each delivery before acking it, and consume again when the broker cancels them (a
queue's node went away) or their connection drops.

Every loop stops at `stop` or at its deadline, whichever comes first; a confirm in flight when
the deadline passes is bounded by the heartbeat (a dead or silent node) or the broker's own
answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pika
import pika.exceptions

from tests.chaos.checker import Confirm

HEARTBEAT = 2
RETRY_PAUSE = 0.3
CONNECTION_ERRORS = (pika.exceptions.AMQPConnectionError, pika.exceptions.ConnectionClosed,
                     pika.exceptions.StreamLostError, pika.exceptions.ChannelWrongStateError,
                     ConnectionError, OSError)


@dataclass
class History:
    """Everything a run's clients saw, appended from many threads (under one lock)."""

    clock: Callable[[], float]
    published: list[str] = field(default_factory=list)
    confirms: list[Confirm] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # id -> why it is unconfirmed
    deliveries: list[tuple[str, float, str, bool]] = field(default_factory=list)  # id, at, node, redelivered
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def attempt(self, mid: str) -> None:
        with self.lock:
            self.published.append(mid)

    def confirm(self, mid: str, publisher: int, node: str, queue: str) -> None:
        with self.lock:
            self.confirms.append(Confirm(mid, self.clock(), publisher, node, queue))

    def refuse(self, mid: str, why: str) -> None:
        with self.lock:
            self.refused[mid] = why

    def deliver(self, mid: str, node: str, redelivered: bool) -> None:
        with self.lock:
            self.deliveries.append((mid, self.clock(), node, redelivered))

    def error(self, text: str) -> None:
        with self.lock:
            if len(self.errors) < 200:
                self.errors.append(f"{self.clock():.2f}s {text}")


def parameters(endpoints: Sequence[tuple[str, int]], first: int, *, user: str = "guest",
               password: str = "guest") -> list[pika.ConnectionParameters]:
    """The multi-host list, starting at endpoint `first`."""
    order = list(endpoints[first:]) + list(endpoints[:first])
    credentials = pika.PlainCredentials(user, password)
    return [pika.ConnectionParameters(host=h, port=p, credentials=credentials, heartbeat=HEARTBEAT,
                                      connection_attempts=1, socket_timeout=2, stack_timeout=5,
                                      blocked_connection_timeout=10)
            for h, p in order]


def connected_node(conn: pika.BlockingConnection, names: dict[tuple[str, int], str]) -> str:
    # pika does not say publicly which entry of the list it connected to; its parameters do.
    params = conn._impl.params  # noqa: SLF001
    return names.get((params.host, params.port), f"{params.host}:{params.port}")


def _close(conn: pika.BlockingConnection | None) -> None:
    if conn is None:
        return
    try:
        if conn.is_open:
            conn.close()
    except Exception:  # noqa: BLE001 - it is going away either way
        pass


@dataclass
class Workload:
    endpoints: Sequence[tuple[str, int]]
    node_names: Sequence[str]
    queues: Sequence[str]
    history: History
    run_tag: str
    publishers: int = 3
    consumers: int = 3
    rate: float = 60.0  # messages per second per publisher
    prefetch: int = 50
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def names(self) -> dict[tuple[str, int], str]:
        return {tuple(e): n for e, n in zip(self.endpoints, self.node_names)}  # type: ignore[misc]

    def start(self, deadline: float) -> None:
        """Start every client; each stops by itself at `deadline` (time.monotonic())."""
        for k in range(self.publishers):
            self.threads.append(threading.Thread(target=self._publisher, args=(k, deadline), daemon=True,
                                                 name=f"chaos-publisher-{k}"))
        for k in range(self.consumers):
            self.threads.append(threading.Thread(target=self._consumer, args=(k, deadline), daemon=True,
                                                 name=f"chaos-consumer-{k}"))
        for t in self.threads:
            t.start()

    def finish(self, timeout: float) -> list[str]:
        """Stop every client and wait for them; the names of any still running after `timeout`."""
        self.stop.set()
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]

    def _running(self, deadline: float) -> bool:
        return not self.stop.is_set() and time.monotonic() < deadline

    # ------------------------------------------------------------------ publishing

    def _publisher(self, k: int, deadline: float) -> None:
        h = self.history
        seq = 0
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        while self._running(deadline):
            conn = None
            try:
                conn = pika.BlockingConnection(parameters(self.endpoints, k % len(self.endpoints)))
                node = connected_node(conn, self.names)
                ch = conn.channel()
                ch.confirm_delivery()
                next_at = time.monotonic()
                while self._running(deadline):
                    mid = f"{self.run_tag}.p{k}.{seq}"
                    queue = self.queues[seq % len(self.queues)]
                    seq += 1
                    h.attempt(mid)
                    try:
                        ch.basic_publish("", queue, mid.encode(), pika.BasicProperties(
                            delivery_mode=2, message_id=mid), mandatory=True)
                    except pika.exceptions.NackError:
                        h.refuse(mid, "nack")
                        continue
                    except pika.exceptions.UnroutableError:
                        h.refuse(mid, "returned")
                        continue
                    except pika.exceptions.ChannelClosedByBroker as exc:
                        h.refuse(mid, f"channel closed {exc.reply_code}")
                        ch = conn.channel()
                        ch.confirm_delivery()
                        continue
                    except BaseException:
                        h.refuse(mid, "connection lost")
                        raise
                    h.confirm(mid, k, node, queue)
                    next_at += interval
                    pause = next_at - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    else:
                        next_at = time.monotonic()
            except CONNECTION_ERRORS + (pika.exceptions.AMQPError,) as exc:
                h.error(f"publisher {k}: {type(exc).__name__}: {exc}")
                time.sleep(RETRY_PAUSE)
            finally:
                _close(conn)

    # ------------------------------------------------------------------ consuming

    def _consumer(self, k: int, deadline: float) -> None:
        h = self.history
        while self._running(deadline):
            conn = None
            try:
                conn = pika.BlockingConnection(parameters(self.endpoints, k % len(self.endpoints)))
                node = connected_node(conn, self.names)
                self._consume_on(conn, node, k, deadline)
            except CONNECTION_ERRORS + (pika.exceptions.AMQPError,) as exc:
                h.error(f"consumer {k}: {type(exc).__name__}: {exc}")
                time.sleep(RETRY_PAUSE)
            finally:
                _close(conn)

    def _consume_on(self, conn: pika.BlockingConnection, node: str, k: int, deadline: float) -> None:
        h = self.history
        ch = None
        tags: dict[str, str] = {}  # consumer tag -> queue
        retry_at: dict[str, float] = {}

        def on_message(channel, method, properties, body) -> None:  # type: ignore[no-untyped-def]
            h.deliver(properties.message_id or body.decode(errors="replace"), node, bool(method.redelivered))
            channel.basic_ack(method.delivery_tag)

        def on_cancel(frame) -> None:  # type: ignore[no-untyped-def]
            tags.pop(frame.method.consumer_tag, None)

        while self._running(deadline):
            if ch is None or ch.is_closed:
                tags.clear()
                ch = conn.channel()
                ch.basic_qos(prefetch_count=self.prefetch)
                ch.add_on_cancel_callback(on_cancel)
            consuming = set(tags.values())
            for q in self.queues:
                if q in consuming or retry_at.get(q, 0.0) > time.monotonic():
                    continue
                try:
                    tags[ch.basic_consume(q, on_message)] = q
                except pika.exceptions.ChannelClosedByBroker as exc:
                    h.error(f"consumer {k} on {node}: consume {q}: {exc.reply_code} {exc.reply_text}")
                    retry_at[q] = time.monotonic() + 0.5
                    ch = None
                    break
            conn.process_data_events(time_limit=0.2)


def drain(endpoints: Sequence[tuple[str, int]], node_names: Sequence[str], queues: Sequence[str],
          history: History, *, limit: int, timeout: float) -> list[str]:
    """Take every message left in every queue through every node in turn (basic.get, acked),
    recording each as a delivery, then ask every node for each queue's depth. Returns the
    problems met (a node that cannot be reached, a queue still holding messages)."""
    problems: list[str] = []
    deadline = time.monotonic() + timeout
    taken = 0
    for i, (host, port) in enumerate(endpoints):
        node = node_names[i]
        params = parameters([(host, port)], 0)[0]
        try:
            conn = pika.BlockingConnection(params)
        except CONNECTION_ERRORS + (pika.exceptions.AMQPError,) as exc:
            problems.append(f"drain: cannot connect to {node}: {exc}")
            continue
        try:
            ch = conn.channel()
            for q in queues:
                while taken < limit and time.monotonic() < deadline:
                    method, properties, body = ch.basic_get(q, auto_ack=False)
                    if method is None:
                        break
                    history.deliver(properties.message_id or body.decode(errors="replace"), node,
                                    bool(method.redelivered))
                    ch.basic_ack(method.delivery_tag)
                    taken += 1
        except (pika.exceptions.AMQPError, *CONNECTION_ERRORS) as exc:
            problems.append(f"drain through {node}: {type(exc).__name__}: {exc}")
        finally:
            _close(conn)
    for i, (host, port) in enumerate(endpoints):
        try:
            conn = pika.BlockingConnection(parameters([(host, port)], 0)[0])
            try:
                ch = conn.channel()
                for q in queues:
                    depth = ch.queue_declare(q, passive=True).method.message_count
                    if depth:
                        problems.append(f"{q} still holds {depth} message(s) seen from {node_names[i]}")
            finally:
                _close(conn)
        except (pika.exceptions.AMQPError, *CONNECTION_ERRORS) as exc:
            problems.append(f"depth through {node_names[i]}: {type(exc).__name__}: {exc}")
    if taken >= limit:
        problems.append(f"drain stopped at its limit of {limit} messages")
    return problems
