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
from tests.ctl.support import connect, ctl, ok
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

        # Charted: b's history of its queue, through a, in RabbitMQ's shape.
        charts = "msg_rates_age=60&msg_rates_incr=5&lengths_age=60&lengths_incr=5"
        queue = api.ok("GET", f"/api/queues/%2F/rates.b?{charts}")
        for details in (queue["message_stats"]["publish_details"], queue["messages_details"]):
            samples = details["samples"]
            assert len(samples) == 13 and max(s["sample"] for s in samples) > 0, details
            times = [s["timestamp"] for s in samples]
            assert times == sorted(times, reverse=True) and all(t % 5000 == 0 for t in times)
            assert set(details) == {"rate", "samples", "avg", "avg_rate"}
        overview = api.ok("GET", f"/api/overview?{charts}")
        assert max(s["sample"] for s in overview["message_stats"]["publish_details"]["samples"]) > 0
        assert max(s["sample"] for s in overview["queue_totals"]["messages_details"]["samples"]) > 0
        vhost = api.ok("GET", f"/api/vhosts/%2F?{charts}")
        assert max(s["sample"] for s in vhost["message_stats"]["publish_details"]["samples"]) > 0
        assert "samples" not in api.ok("GET", "/api/queues/%2F/rates.b")["messages_details"]  # only when asked
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


def test_leveretctl_lists_the_clusters_connections_channels_and_consumers(cluster: list[NodeProcess]) -> None:
    """rabbitmqctl lists every running node's: so does leveretctl, asked on any node."""
    a, b, c = cluster
    api = Api(a.management_url)
    declaring = connect(b)
    try:
        declaring.channel().queue_declare("ctl.b")
    finally:
        declaring.close()
    conn = named_connection(c, "ctl-on-c")
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=4)
        ch.basic_consume("ctl.b", lambda *args: None, consumer_tag="ctl-tag")
        conn.process_data_events(0.1)
        [row] = by_client_name(settled(api, "/api/connections", lambda rows: by_client_name(rows, "ctl-on-c")),
                               "ctl-on-c")
        connections = ok(a, "-q", "list_connections", "peer_port", "user", "state").lines
        assert f"{row['peer_port']}\tguest\trunning" in connections
        channels = ok(a, "-q", "list_channels", "name", "prefetch_count", "consumer_count").lines
        assert f"{row['name']} ({ch.channel_number})\t4\t1" in channels
        consumers = ok(a, "-q", "list_consumers", "queue_name", "consumer_tag", "prefetch_count").lines
        assert "ctl.b\tctl-tag\t4" in consumers
        # Every member is running, as /api/vhosts words it.
        assert api.ok("GET", "/api/vhosts/%2F")["cluster_state"] == {A: "running", B: "running", C: "running"}
        ch.queue_delete("ctl.b")
    finally:
        conn.close()


def test_a_member_that_does_not_answer_is_left_out(cluster: list[NodeProcess]) -> None:
    a, _b, c = cluster
    api = Api(a.management_url)
    on_a, on_c = named_connection(a, "stays-on-a"), named_connection(c, "paused-on-c")
    try:
        [paused] = by_client_name(settled(api, "/api/connections", lambda rows: by_client_name(rows, "paused-on-c")),
                                  "paused-on-c")
        c.pause()  # alive to its peer link for a while, answering nothing
        started = time.monotonic()
        for path in ("/api/connections", "/api/channels", "/api/consumers", "/api/overview"):
            assert api.get(path).status == 200, path
        rows = api.ok("GET", "/api/connections")
        assert by_client_name(rows, "stays-on-a") and not by_client_name(rows, "paused-on-c")
        # Counted as running while its link stands, c does not answer: "nodedown", as
        # RabbitMQ words it; once its link is down it is not running and not listed.
        state = api.ok("GET", "/api/vhosts/%2F")["cluster_state"]
        assert state in ({A: "running", B: "running", C: "nodedown"}, {A: "running", B: "running"}), state
        # leveretctl leaves c out, with rabbitmqctl's line for a node that timed out (or none
        # once c is known to be down).
        listed = ctl(a, "-q", "list_connections", "peer_port")
        assert listed.code == 0 and listed.err in ("", "{:badrpc, {:timeout, 3.0}}\n"), listed
        assert str(paused["peer_port"]) not in listed.lines and len(listed.lines) >= 1, listed
        assert time.monotonic() - started < 40
    finally:
        c.resume()
        on_a.close()
        try:
            on_c.close()
        except pika.exceptions.AMQPError:
            pass  # its heartbeat may have lapsed while c was paused
