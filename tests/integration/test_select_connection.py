"""pika's asynchronous SelectConnection: consume with manual acks and publisher confirms
(with coalesced multiple acks and nacks) on one connection, driven by callbacks."""

from __future__ import annotations

from typing import Any

import pika

from tests.integration.conftest import unique


def _expand(confirms: list[tuple[str, int, bool]], published: int) -> dict[int, str]:
    """Sequence number -> 'ack' / 'nack', checking each is confirmed exactly once."""
    outcome: dict[int, str] = {}
    low = 1
    for kind, tag, multiple in confirms:
        seqs = range(low, tag + 1) if multiple else [tag]
        for s in seqs:
            if s in outcome:
                continue
            outcome[s] = kind
        while low in outcome:
            low += 1
    assert sorted(outcome) == list(range(1, published + 1))
    return outcome


class _Run:
    """One SelectConnection scenario; `finish()` stops the ioloop, a timer bounds the run."""

    def __init__(self, url: str, timeout: float = 15.0) -> None:
        self.conn = pika.SelectConnection(pika.URLParameters(url), on_open_callback=self._opened,
                                          on_open_error_callback=self._failed)
        self.conn.ioloop.call_later(timeout, self.finish)
        self.error: Any = None
        self.started: Any = None

    def _opened(self, conn: pika.SelectConnection) -> None:
        conn.channel(on_open_callback=self.started)

    def _failed(self, _conn: Any, error: Any) -> None:
        self.error = error
        self.conn.ioloop.stop()

    def finish(self) -> None:
        if self.conn.is_open:
            self.conn.close()
        self.conn.ioloop.call_later(0.2, self.conn.ioloop.stop)

    def run(self) -> None:
        self.conn.ioloop.start()
        assert self.error is None, self.error


def test_consume_and_confirm_with_select_connection(amqp_url):
    q = unique("select")
    n = 300
    run = _Run(amqp_url)
    confirms: list[tuple[str, int, bool]] = []
    consumed: list[bytes] = []
    state: dict[str, Any] = {}

    def check_done() -> None:
        if len(consumed) == n and confirms and _all_confirmed():
            ch = state["ch"]
            ch.queue_delete(q, callback=lambda _f: run.finish())

    def _all_confirmed() -> bool:
        try:
            _expand(confirms, n)
            return True
        except AssertionError:
            return False

    def on_confirm(frame: Any) -> None:
        m = frame.method
        confirms.append((m.NAME.split(".")[1].lower(), m.delivery_tag, m.multiple))
        check_done()

    def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
        consumed.append(body)
        ch.basic_ack(method.delivery_tag)
        check_done()

    def on_consume_ok(_frame: Any) -> None:
        ch = state["ch"]
        for i in range(n):
            ch.basic_publish("", q, str(i).encode(), pika.BasicProperties(delivery_mode=2))

    def on_declared(_frame: Any) -> None:
        ch = state["ch"]
        ch.basic_qos(prefetch_count=50)
        ch.basic_consume(q, on_message, callback=on_consume_ok)

    def on_confirm_select(_frame: Any) -> None:
        state["ch"].queue_declare(q, durable=True, callback=on_declared)

    def started(ch: Any) -> None:
        state["ch"] = ch
        ch.confirm_delivery(on_confirm, callback=on_confirm_select)

    run.started = started
    run.run()
    assert consumed == [str(i).encode() for i in range(n)]
    outcome = _expand(confirms, n)
    assert set(outcome.values()) == {"ack"}
    # A burst of publishes is confirmed with coalesced (multiple) acks, not one frame each.
    assert any(multiple for _k, _t, multiple in confirms)
    assert len(confirms) < n


def test_select_connection_gets_nacks_for_a_full_reject_publish_queue(amqp_url):
    q = unique("select-nack")
    n = 40
    run = _Run(amqp_url)
    confirms: list[tuple[str, int, bool]] = []
    state: dict[str, Any] = {}

    def on_confirm(frame: Any) -> None:
        m = frame.method
        confirms.append((m.NAME.split(".")[1].lower(), m.delivery_tag, m.multiple))
        try:
            _expand(confirms, n)
        except AssertionError:
            return
        state["ch"].queue_delete(q, callback=lambda f: (state.__setitem__("deleted", f.method.message_count),
                                                        run.finish()))

    def on_declared(_frame: Any) -> None:
        for i in range(n):
            state["ch"].basic_publish("", q, str(i).encode())

    def started(ch: Any) -> None:
        state["ch"] = ch
        ch.confirm_delivery(on_confirm, callback=lambda _f: ch.queue_declare(
            q, arguments={"x-max-length": 10, "x-overflow": "reject-publish"}, callback=on_declared))

    run.started = started
    run.run()
    outcome = _expand(confirms, n)
    assert [outcome[s] for s in range(1, n + 1)] == ["ack"] * 10 + ["nack"] * 30
    assert state["deleted"] == 10
