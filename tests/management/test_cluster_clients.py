"""Node a's management API shows what lives on the other members: the message rates of a
queue led on b (sampled by b, which serves no API itself), a consumer connected to c of a
queue led on b (in /api/consumers and the queue's consumer_details, with c's connection
and channel), c's connections and channels; it closes a connection on c; and a member that
does not answer is left out of the lists, which still answer.

One cluster for the module: a serves the API, b and c do not. The test that stops c runs last.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from tests.clustering.test_join_and_metadata import join
from tests.ctl.support import connect
from tests.management.http import Api, q
from tests.management.test_cluster_wide import settled
from tests.support.node_process import NodeProcess, wait_for_port

A, B, C = "cc-a@localhost", "cc-b@localhost", "cc-c@localhost"


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[NodeProcess]]:
    nodes = [NodeProcess(name=A).with_http(), NodeProcess(name=B), NodeProcess(name=C)]
    try:
        for n in nodes:
            n.start()
        a, b, c = nodes
        join(b, a.name)
        join(c, a.name)
        wait_for_port(a.host, a.management_port, 10)
        yield nodes
        for n in nodes:
            if n.proc is not None and n.proc.poll() is None:
                assert "Traceback" not in n.log_text(), n.log_text()
    finally:
        for n in nodes:
            n.stop()  # resumes a paused one first


def named_connection(node: NodeProcess, name: str) -> pika.BlockingConnection:
    """A connection to `node` whose client properties carry `connection_name` (to find it by)."""
    params = pika.URLParameters(node.url)
    params.client_properties = {"connection_name": name}
    return pika.BlockingConnection(params)


def by_client_name(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in rows if (r.get("client_properties") or {}).get("connection_name") == name]


def test_rates_of_a_queue_led_elsewhere_are_its_leaders(cluster: list[NodeProcess]) -> None:
    a, b, _c = cluster
    api = Api(a.management_url)
    conn = connect(b)
    try:
        ch = conn.channel()
        ch.queue_declare("rates.b")
        assert settled(api, "/api/queues/%2F/rates.b", lambda row: row["state"] == "running")["node"] == B
        # b samples every 5 s: publish until two of its samples differ (20 s at most).
        deadline = time.monotonic() + 20
        queue: dict[str, Any] = {}
        while time.monotonic() < deadline:
            for _ in range(50):
                ch.basic_publish("", "rates.b", b"tick")
            conn.process_data_events(0)
            queue = api.ok("GET", "/api/queues/%2F/rates.b")
            if queue["message_stats"]["publish_details"]["rate"] > 0 and queue["messages_details"]["rate"] > 0:
                break
            time.sleep(0.3)
        assert queue["message_stats"]["publish_details"]["rate"] > 0, queue["message_stats"]
        assert queue["messages_details"]["rate"] > 0 and queue["messages_ready_details"]["rate"] > 0, queue
        listed = {row["name"]: row for row in api.ok("GET", "/api/queues/%2F")}
        assert listed["rates.b"]["message_stats"]["publish_details"]["rate"] > 0
        overview = api.ok("GET", "/api/overview")
        assert overview["message_stats"]["publish_details"]["rate"] > 0, overview["message_stats"]
        assert overview["queue_totals"]["messages_details"]["rate"] > 0, overview["queue_totals"]
        assert api.ok("GET", "/api/vhosts/%2F")["message_stats"]["publish_details"]["rate"] > 0
        ch.queue_delete("rates.b")
    finally:
        conn.close()


def test_a_consumer_on_c_of_a_queue_led_on_b_is_listed_by_a(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    api = Api(a.management_url)
    declaring = connect(b)
    try:
        declaring.channel().queue_declare("consumed.b")
    finally:
        declaring.close()
    conn = named_connection(c, "consumer-on-c")
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=3)
        ch.basic_consume("consumed.b", lambda *args: None, consumer_tag="on-c",
                         arguments={"x-priority": 5})
        conn.process_data_events(0.1)

        [connection] = by_client_name(settled(api, "/api/connections",
                                              lambda rows: by_client_name(rows, "consumer-on-c")),
                                      "consumer-on-c")
        assert connection["node"] == C and connection["channels"] == 1 and connection["user"] == "guest"
        channels = [r for r in api.ok("GET", "/api/channels") if r["connection_details"]["name"] == connection["name"]]
        assert [(r["node"], r["number"], r["prefetch_count"], r["consumer_count"]) for r in channels] == [
            (C, ch.channel_number, 3, 1)]
        assert api.ok("GET", f"/api/connections/{q(connection['name'])}/channels")[0]["name"] == channels[0]["name"]

        expected = {
            "consumer_tag": "on-c", "queue": {"name": "consumed.b", "vhost": "/"}, "ack_required": True,
            "exclusive": False, "prefetch_count": 3, "active": True, "activity_status": "up",
            "arguments": {"x-priority": 5},
            "channel_details": {"connection_name": connection["name"], "name": channels[0]["name"], "node": C,
                                "number": ch.channel_number, "peer_host": connection["peer_host"],
                                "peer_port": connection["peer_port"], "user": "guest"},
        }
        listed = [r for r in api.ok("GET", "/api/consumers") if r["consumer_tag"] == "on-c"]
        assert listed == [expected]
        assert [r for r in api.ok("GET", "/api/consumers/%2F") if r["consumer_tag"] == "on-c"] == [expected]
        queue = api.ok("GET", "/api/queues/%2F/consumed.b")
        assert (queue["node"], queue["consumers"], queue["consumer_details"]) == (B, 1, [expected])

        ch.basic_cancel("on-c")
        settled(api, "/api/queues/%2F/consumed.b", lambda row: row["consumer_details"] == [] and row["consumers"] == 0)
        assert [r for r in api.ok("GET", "/api/consumers") if r["consumer_tag"] == "on-c"] == []
        ch.queue_delete("consumed.b")
    finally:
        conn.close()


def test_a_connection_on_c_is_closed_through_a(cluster: list[NodeProcess]) -> None:
    a, _b, c = cluster
    api = Api(a.management_url)
    conn = named_connection(c, "close-me")
    try:
        [row] = by_client_name(settled(api, "/api/connections", lambda rows: by_client_name(rows, "close-me")),
                               "close-me")
        assert row["node"] == C
        assert api.ok("GET", f"/api/connections/{q(row['name'])}")["node"] == C
        closed = api.delete(f"/api/connections/{q(row['name'])}", headers={"X-Reason": "asked on a"})
        assert closed.status == 204, closed.text
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as why:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                conn.process_data_events(0.1)
        assert (why.value.reply_code, why.value.reply_text) == (320, "CONNECTION_FORCED - asked on a")
        settled(api, "/api/connections", lambda rows: not by_client_name(rows, "close-me"))
        assert api.delete(f"/api/connections/{q(row['name'])}").status == 404
    finally:
        if conn.is_open:
            conn.close()


def test_a_member_that_does_not_answer_is_left_out(cluster: list[NodeProcess]) -> None:
    a, _b, c = cluster
    api = Api(a.management_url)
    on_a, on_c = named_connection(a, "stays-on-a"), named_connection(c, "paused-on-c")
    try:
        settled(api, "/api/connections", lambda rows: by_client_name(rows, "paused-on-c"))
        c.pause()  # alive to its peer link for a while, answering nothing
        started = time.monotonic()
        for path in ("/api/connections", "/api/channels", "/api/consumers", "/api/overview"):
            assert api.get(path).status == 200, path
        rows = api.ok("GET", "/api/connections")
        assert by_client_name(rows, "stays-on-a") and not by_client_name(rows, "paused-on-c")
        assert time.monotonic() - started < 30
    finally:
        c.resume()
        on_a.close()
        try:
            on_c.close()
        except pika.exceptions.AMQPError:
            pass  # its heartbeat may have lapsed while c was paused
