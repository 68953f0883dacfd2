"""The management API's routes against a real node: RabbitMQ 3.10's paths, methods, status
codes and JSON shapes, and their effect seen from an AMQP client (pika) where there is one.

Names are per test (the node is shared by the session)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pika
import pytest

from tests.management.http import Api, q
from tests.support.node_process import NodeProcess


@pytest.fixture
def amqp(http_node: NodeProcess) -> Iterator[pika.BlockingConnection]:
    conn = pika.BlockingConnection(pika.URLParameters(http_node.url))
    try:
        yield conn
    finally:
        if conn.is_open:
            conn.close()


def publish(api: Api, exchange: str, routing_key: str, payload: str, **properties: object) -> bool:
    body = {"routing_key": routing_key, "payload": payload, "payload_encoding": "string", "properties": properties}
    return api.ok("POST", f"/api/exchanges/%2F/{q(exchange)}/publish", body)["routed"]


# --------------------------------------------------------------------------- overview, nodes


def test_overview_counts_what_the_node_holds(api: Api, http_node: NodeProcess) -> None:
    api.ok("PUT", "/api/queues/%2F/ov-q", {"durable": True})
    publish(api, "amq.default", "ov-q", "one")
    publish(api, "amq.default", "ov-q", "two")
    overview = api.ok("GET", "/api/overview")
    assert overview["node"] == http_node.name and overview["cluster_name"] == http_node.name
    assert overview["rabbitmq_version"] == "3.10.8" and overview["management_version"] == "3.10.8"
    assert overview["object_totals"]["queues"] >= 1
    assert overview["object_totals"]["exchanges"] >= 7
    assert overview["queue_totals"]["messages_ready"] >= 2
    assert set(overview["queue_totals"]) >= {"messages", "messages_details", "messages_ready",
                                             "messages_ready_details", "messages_unacknowledged"}
    assert overview["message_stats"]["publish"] >= 2 and "rate" in overview["message_stats"]["publish_details"]
    protocols = {listener["protocol"]: listener["port"] for listener in overview["listeners"]}
    assert protocols["amqp"] == http_node.port and protocols["http"] == http_node.management_port
    assert protocols["http/prometheus"] == http_node.prometheus_port
    assert {t["name"] for t in overview["exchange_types"]} == {"direct", "fanout", "headers", "topic"}


def test_nodes_list_this_node_running(api: Api, http_node: NodeProcess) -> None:
    nodes = api.ok("GET", "/api/nodes")
    assert [n["name"] for n in nodes] == [http_node.name]
    node = api.ok("GET", f"/api/nodes/{q(http_node.name)}")
    assert node["running"] is True and node["partitions"] == [] and node["mem_alarm"] is False
    assert node["mem_used"] > 0 and node["disk_free"] > node["disk_free_limit"] > 0
    assert api.ok("GET", f"/api/nodes/{q(http_node.name)}?columns=name,running") == {
        "name": http_node.name, "running": True}
    assert api.get("/api/nodes/nobody@nowhere").status == 404


def test_cluster_name_extensions_whoami(api: Api, http_node: NodeProcess) -> None:
    assert api.ok("GET", "/api/cluster-name") == {"name": http_node.name}
    assert api.ok("GET", "/api/extensions") == []
    assert api.ok("GET", "/api/whoami") == {"name": "guest", "tags": ["administrator"]}


# --------------------------------------------------------------------------- queues


def test_queue_put_get_delete(api: Api) -> None:
    reply = api.put("/api/queues/%2F/qa", {"durable": True, "arguments": {"x-max-length": 10}})
    assert reply.status == 201 and reply.text == ""
    assert api.put("/api/queues/%2F/qa", {"durable": True, "arguments": {"x-max-length": 10}}).status == 204
    queue = api.ok("GET", "/api/queues/%2F/qa")
    assert queue["name"] == "qa" and queue["vhost"] == "/" and queue["durable"] is True
    assert queue["arguments"] == {"x-max-length": 10} and queue["type"] == "classic"
    assert queue["messages"] == 0 and queue["consumers"] == 0 and queue["state"] == "running"
    assert queue["consumer_details"] == [] and queue["policy"] is None
    inequivalent = api.put("/api/queues/%2F/qa", {"durable": True})
    assert inequivalent.status == 400 and inequivalent.body["error"] == "bad_request"
    assert "inequivalent arg 'x-max-length'" in inequivalent.body["reason"]
    assert api.delete("/api/queues/%2F/qa").status == 204
    assert api.get("/api/queues/%2F/qa").status == 404
    assert api.delete("/api/queues/%2F/qa").status == 404


def test_queue_counts_follow_publish_get_and_purge(api: Api) -> None:
    api.ok("PUT", "/api/queues/%2F/qc", {"durable": False})
    assert publish(api, "amq.default", "qc", "hello", delivery_mode=2, headers={"h": 1}, content_type="text/plain")
    assert publish(api, "amq.default", "qc", "world")
    assert not publish(api, "amq.default", "no-such-queue", "lost")
    queue = api.ok("GET", "/api/queues/%2F/qc")
    assert (queue["messages"], queue["messages_ready"], queue["messages_unacknowledged"]) == (2, 2, 0)
    assert queue["message_stats"]["publish"] == 2
    got = api.ok("POST", "/api/queues/%2F/qc/get", {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert got == [{"payload_bytes": 5, "redelivered": False, "exchange": "", "routing_key": "qc", "message_count": 1,
                    "properties": {"content_type": "text/plain", "headers": {"h": 1}, "delivery_mode": 2},
                    "payload": "hello", "payload_encoding": "string"}]
    # Requeued: still two, the first now redelivered.
    again = api.ok("POST", "/api/queues/%2F/qc/get", {"count": 5, "ackmode": "ack_requeue_false", "encoding": "base64"})
    assert [(m["payload"], m["payload_encoding"]) for m in again] == [("aGVsbG8=", "base64"), ("d29ybGQ=", "base64")]
    assert sorted(m["redelivered"] for m in again) == [False, True]
    assert api.ok("GET", "/api/queues/%2F/qc")["messages"] == 0
    publish(api, "amq.default", "qc", "x")
    assert api.delete("/api/queues/%2F/qc/contents").status == 204
    assert api.ok("GET", "/api/queues/%2F/qc")["messages"] == 0


def test_get_truncates_and_reports_empty(api: Api) -> None:
    api.ok("PUT", "/api/queues/%2F/qt")
    assert api.ok("POST", "/api/queues/%2F/qt/get", {"count": 1, "ackmode": "ack_requeue_false",
                                                     "encoding": "auto"}) == []
    publish(api, "amq.default", "qt", "abcdefgh")
    got = api.ok("POST", "/api/queues/%2F/qt/get", {"count": "1", "ackmode": "reject_requeue_false",
                                                    "encoding": "auto", "truncate": 3})
    assert got[0]["payload"] == "abc" and got[0]["payload_bytes"] == 8


def test_queue_seen_by_amqp_and_amqp_queue_seen_by_api(api: Api, amqp: pika.BlockingConnection) -> None:
    api.ok("PUT", "/api/queues/%2F/qx", {"durable": True})
    ch = amqp.channel()
    assert ch.queue_declare("qx", passive=True).method.message_count == 0
    ch.queue_declare("qy", durable=False, auto_delete=True, arguments={"x-message-ttl": 60000})
    ch.basic_publish("", "qy", b"from amqp")
    ch.basic_consume("qy", lambda *a: None, consumer_tag="qy-consumer")
    amqp.process_data_events(0.2)
    queue = api.ok("GET", "/api/queues/%2F/qy")
    assert queue["auto_delete"] is True and queue["arguments"] == {"x-message-ttl": 60000}
    assert queue["consumers"] == 1 and queue["messages_unacknowledged"] == 1
    assert queue["message_stats"]["deliver"] == 1
    [consumer] = queue["consumer_details"]
    assert consumer["consumer_tag"] == "qy-consumer" and consumer["queue"] == {"name": "qy", "vhost": "/"}
    assert consumer["ack_required"] is True and consumer["channel_details"]["number"] == ch.channel_number


def test_queue_listing_by_vhost_pages_sorts_and_selects_columns(api: Api) -> None:
    for name in ("pg-b", "pg-a", "pg-c"):
        api.ok("PUT", f"/api/queues/%2F/{name}")
    names = [x["name"] for x in api.ok("GET", "/api/queues/%2F?sort=name") if x["name"].startswith("pg-")]
    assert names == ["pg-a", "pg-b", "pg-c"]
    names = [x["name"] for x in api.ok("GET", "/api/queues?sort=name&sort_reverse=true") if x["name"].startswith("pg-")]
    assert names == ["pg-c", "pg-b", "pg-a"]
    page = api.ok("GET", "/api/queues/%2F?page=1&page_size=2&name=pg-&sort=name&columns=name,messages")
    assert page["items"] == [{"name": "pg-a", "messages": 0}, {"name": "pg-b", "messages": 0}]
    assert (page["page"], page["page_size"], page["page_count"], page["filtered_count"], page["item_count"]) == (
        1, 2, 2, 3, 2)
    regex = api.ok("GET", "/api/queues/%2F?page=1&page_size=5&name=%5Epg-%5Bac%5D&use_regex=true&sort=name")
    assert [x["name"] for x in regex["items"]] == ["pg-a", "pg-c"] and regex["filtered_count"] == 2
    beyond = api.get("/api/queues/%2F?page=2&page_size=5&name=pg-")
    assert beyond.status == 400 and beyond.body == {
        "error": "page_out_of_range", "reason": "Page out of range, page: 2 page size: 5, len: 3"}
    dotted = api.ok("GET", "/api/queues/%2F?columns=name,message_stats.publish&sort=name")
    assert {"name": "pg-a", "message_stats": {"publish": 0}} in dotted


def test_queue_actions_and_mirror_fields(api: Api) -> None:
    api.ok("PUT", "/api/queues/%2F/qq", {"durable": True, "arguments": {"x-queue-type": "quorum"}})
    quorum = api.ok("GET", "/api/queues/%2F/qq")
    assert quorum["type"] == "quorum" and quorum["leader"] == quorum["node"]
    assert quorum["members"] == [quorum["node"]] and quorum["online"] == [quorum["node"]]
    api.ok("PUT", "/api/policies/%2F/ha-mirrors", {"pattern": "^ha-", "definition": {"ha-mode": "all"},
                                                   "apply-to": "queues"})
    api.ok("PUT", "/api/queues/%2F/ha-one", {"durable": True})
    mirrored = api.ok("GET", "/api/queues/%2F/ha-one")
    assert mirrored["policy"] == "ha-mirrors" and mirrored["effective_policy_definition"] == {"ha-mode": "all"}
    assert mirrored["slave_nodes"] == [] and mirrored["synchronised_slave_nodes"] == []
    assert api.post("/api/queues/%2F/ha-one/actions", {"action": "sync"}).status == 204
    assert api.post("/api/queues/%2F/ha-one/actions", {"action": "cancel_sync"}).status == 204
    bad = api.post("/api/queues/%2F/ha-one/actions", {"action": "explode"})
    assert bad.status == 400 and "action" in bad.body["reason"]
    api.ok("DELETE", "/api/policies/%2F/ha-mirrors")


def test_queue_delete_if_empty_and_if_unused(api: Api) -> None:
    api.ok("PUT", "/api/queues/%2F/qe")
    publish(api, "amq.default", "qe", "keep")
    refused = api.delete("/api/queues/%2F/qe?if-empty=true")
    assert refused.status == 400 and "not empty" in refused.body["reason"]
    assert api.delete("/api/queues/%2F/qe?if-unused=true").status == 204


# --------------------------------------------------------------------------- exchanges and bindings


def test_exchange_put_get_publish_delete(api: Api, amqp: pika.BlockingConnection) -> None:
    assert api.put("/api/exchanges/%2F/ex1", {"type": "topic", "durable": True}).status == 201
    assert api.put("/api/exchanges/%2F/ex1", {"type": "topic", "durable": True}).status == 204
    exchange = api.ok("GET", "/api/exchanges/%2F/ex1")
    assert {k: exchange[k] for k in ("name", "vhost", "type", "durable", "auto_delete", "internal", "arguments")} == {
        "name": "ex1", "vhost": "/", "type": "topic", "durable": True, "auto_delete": False, "internal": False,
        "arguments": {}}
    other_type = api.put("/api/exchanges/%2F/ex1", {"type": "direct"})
    assert other_type.status == 400 and "inequivalent arg 'type'" in other_type.body["reason"]
    # Without "durable" an exchange is transient and "direct", as RabbitMQ 3.10 declares it.
    assert api.put("/api/exchanges/%2F/ex-defaults", {}).status == 201
    defaults = api.ok("GET", "/api/exchanges/%2F/ex-defaults")
    assert (defaults["type"], defaults["durable"], defaults["auto_delete"]) == ("direct", False, False)
    api.ok("DELETE", "/api/exchanges/%2F/ex-defaults")
    unknown = api.put("/api/exchanges/%2F/ex2", {"type": "nope"})
    assert unknown.status == 400 and unknown.body["reason"] == "unknown exchange type 'nope'"
    default = api.ok("GET", "/api/exchanges/%2F/amq.default")
    assert default["name"] == "" and default["type"] == "direct"
    assert "ex1" in [x["name"] for x in api.ok("GET", "/api/exchanges/%2F")]
    assert "ex1" in [x["name"] for x in api.ok("GET", "/api/exchanges")]
    ch = amqp.channel()
    ch.queue_declare("ex1-q", exclusive=True)
    ch.queue_bind("ex1-q", "ex1", "a.*")
    assert publish(api, "ex1", "a.b", "routed")
    assert not publish(api, "ex1", "b.b", "unrouted")
    method, _props, body = ch.basic_get("ex1-q", auto_ack=True)
    assert body == b"routed" and method.routing_key == "a.b"
    assert api.delete("/api/exchanges/%2F/ex1").status == 204
    assert api.get("/api/exchanges/%2F/ex1").status == 404
    missing = api.post("/api/exchanges/%2F/ex1/publish", {"routing_key": "k", "payload": "x",
                                                           "payload_encoding": "string", "properties": {}})
    assert missing.status == 400 and missing.body["reason"] == "404 NOT_FOUND - no exchange 'ex1' in vhost '/'"


def test_bindings_create_list_delete(api: Api) -> None:
    api.ok("PUT", "/api/exchanges/%2F/bx", {"type": "direct"})
    api.ok("PUT", "/api/exchanges/%2F/bx2", {"type": "fanout"})
    api.ok("PUT", "/api/queues/%2F/bq")
    created = api.post("/api/bindings/%2F/e/bx/q/bq", {"routing_key": "k1"})
    assert created.status == 201 and created.headers["location"].endswith("/api/bindings/%2F/e/bx/q/bq/k1")
    assert api.post("/api/bindings/%2F/e/bx/q/bq", {"routing_key": "k2", "arguments": {"a": 1}}).status == 201
    assert api.post("/api/bindings/%2F/e/bx/e/bx2", {"routing_key": "k3"}).status == 201
    pair = api.ok("GET", "/api/bindings/%2F/e/bx/q/bq")
    assert [(b["routing_key"], b["arguments"]) for b in pair] == [("k1", {}), ("k2", {"a": 1})]
    assert pair[0] == {"source": "bx", "vhost": "/", "destination": "bq", "destination_type": "queue",
                       "routing_key": "k1", "arguments": {}, "properties_key": "k1"}
    assert pair[1]["properties_key"].startswith("k2~")
    assert api.ok("GET", "/api/bindings/%2F/e/bx/q/bq/k1")["routing_key"] == "k1"
    assert publish(api, "bx", "k1", "via k1")
    assert {(b["source"], b["destination"]) for b in api.ok("GET", "/api/queues/%2F/bq/bindings")} == {
        ("", "bq"), ("bx", "bq")}
    assert [b["destination"] for b in api.ok("GET", "/api/exchanges/%2F/bx/bindings/source")] == ["bq", "bq", "bx2"]
    assert [b["source"] for b in api.ok("GET", "/api/exchanges/%2F/bx2/bindings/destination")] == ["bx"]
    assert any(b["source"] == "bx" for b in api.ok("GET", "/api/bindings/%2F"))
    assert any(b["source"] == "bx" for b in api.ok("GET", "/api/bindings"))
    assert api.delete(f"/api/bindings/%2F/e/bx/q/bq/{q(pair[1]['properties_key'])}").status == 204
    assert api.delete("/api/bindings/%2F/e/bx/q/bq/k1").status == 204
    assert api.delete("/api/bindings/%2F/e/bx/q/bq/k1").status == 404
    assert api.ok("GET", "/api/bindings/%2F/e/bx/q/bq") == []
    assert not publish(api, "bx", "k1", "no longer routed")
    missing = api.post("/api/bindings/%2F/e/bx/q/no-such-queue", {"routing_key": "k"})
    assert missing.status == 404


# --------------------------------------------------------------------------- connections, channels, consumers


def test_connections_channels_consumers_and_closing(api: Api, amqp: pika.BlockingConnection) -> None:
    ch = amqp.channel()
    ch.basic_qos(prefetch_count=7)
    ch.queue_declare("cc-q", exclusive=True)
    ch.basic_consume("cc-q", lambda *a: None, consumer_tag="cc-tag")
    amqp.process_data_events(0.1)
    connections = api.ok("GET", "/api/connections")
    mine = [c for c in connections if c["client_properties"].get("product") == "Pika Python Client Library"]
    assert mine, connections
    conn = mine[-1]
    assert conn["user"] == "guest" and conn["vhost"] == "/" and conn["protocol"] == "AMQP 0-9-1"
    assert conn["channels"] >= 1 and conn["state"] == "running" and conn["auth_mechanism"] == "PLAIN"
    assert api.ok("GET", f"/api/connections/{q(conn['name'])}")["name"] == conn["name"]
    assert conn["name"] in [c["name"] for c in api.ok("GET", "/api/vhosts/%2F/connections")]
    channels = api.ok("GET", f"/api/connections/{q(conn['name'])}/channels")
    [channel] = [c for c in channels if c["number"] == ch.channel_number]
    assert channel["prefetch_count"] == 7 and channel["consumer_count"] == 1
    assert channel["connection_details"]["name"] == conn["name"]
    assert api.ok("GET", f"/api/channels/{q(channel['name'])}")["number"] == ch.channel_number
    assert channel["name"] in [c["name"] for c in api.ok("GET", "/api/channels")]
    assert channel["name"] in [c["name"] for c in api.ok("GET", "/api/vhosts/%2F/channels")]
    consumers = [c for c in api.ok("GET", "/api/consumers") if c["consumer_tag"] == "cc-tag"]
    assert consumers and consumers[0]["prefetch_count"] == 7 and consumers[0]["queue"]["name"] == "cc-q"
    assert [c["consumer_tag"] for c in api.ok("GET", "/api/consumers/%2F") if c["consumer_tag"] == "cc-tag"]
    closed = api.delete(f"/api/connections/{q(conn['name'])}", headers={"X-Reason": "tests say so"})
    assert closed.status == 204
    with pytest.raises(pika.exceptions.ConnectionClosed) as info:
        for _ in range(50):
            amqp.process_data_events(0.1)
    assert info.value.reply_code == 320 and "tests say so" in info.value.reply_text
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and api.get(f"/api/connections/{q(conn['name'])}").status != 404:
        time.sleep(0.05)
    assert api.get(f"/api/connections/{q(conn['name'])}").status == 404
    assert api.delete(f"/api/connections/{q(conn['name'])}").status == 404


# --------------------------------------------------------------------------- vhosts, users, permissions


def test_vhosts_users_permissions(api: Api, http_node: NodeProcess) -> None:
    assert api.put("/api/vhosts/vh1", {"description": "for tests", "tags": "a,b"}).status == 201
    assert api.put("/api/vhosts/vh1", {}).status == 204
    vhost = api.ok("GET", "/api/vhosts/vh1")
    assert {k: v for k, v in vhost.items() if not k.startswith("message")} == {
        "cluster_state": {http_node.name: "running"}, "default_queue_type": "undefined",
        "description": "for tests", "metadata": {"description": "for tests", "tags": ["a", "b"]},
        "name": "vh1", "tags": ["a", "b"], "tracing": False}
    assert (vhost["messages"], vhost["messages_ready"], vhost["messages_unacknowledged"]) == (0, 0, 0)
    assert vhost["messages_details"] == {"rate": 0.0} and vhost["message_stats"] == {}
    assert "vh1" in [v["name"] for v in api.ok("GET", "/api/vhosts")]

    assert api.put("/api/users/u1", {"password": "pw1", "tags": "management"}).status == 201
    user = api.ok("GET", "/api/users/u1")
    assert user["name"] == "u1" and user["tags"] == ["management"] and user["limits"] == {}
    assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256" and user["password_hash"]
    assert "u1" in [u["name"] for u in api.ok("GET", "/api/users/without-permissions")]
    assert api.put("/api/users/u1", {"password": "pw2", "tags": ["management", "policymaker"]}).status == 204
    assert api.ok("GET", "/api/users/u1")["tags"] == ["management", "policymaker"]

    assert api.put("/api/permissions/vh1/u1", {"configure": "^u1-", "write": ".*", "read": ".*"}).status == 201
    assert api.put("/api/permissions/vh1/u1", {"configure": ".*", "write": ".*", "read": ".*"}).status == 204
    permission = {"user": "u1", "vhost": "vh1", "configure": ".*", "write": ".*", "read": ".*"}
    assert api.ok("GET", "/api/permissions/vh1/u1") == permission
    assert permission in api.ok("GET", "/api/permissions")
    assert api.ok("GET", "/api/vhosts/vh1/permissions") == [permission]
    assert api.ok("GET", "/api/users/u1/permissions") == [permission]
    assert "u1" not in [u["name"] for u in api.ok("GET", "/api/users/without-permissions")]

    topic = {"exchange": "amq.topic", "write": "^w", "read": "^r"}
    assert api.put("/api/topic-permissions/vh1/u1", topic).status == 201
    expected = [{"user": "u1", "vhost": "vh1", **topic}]
    assert api.ok("GET", "/api/topic-permissions/vh1/u1") == expected
    assert api.ok("GET", "/api/vhosts/vh1/topic-permissions") == expected
    assert api.ok("GET", "/api/users/u1/topic-permissions") == expected
    assert expected[0] in api.ok("GET", "/api/topic-permissions")
    assert api.delete("/api/topic-permissions/vh1/u1").status == 204
    assert api.get("/api/topic-permissions/vh1/u1").status == 404

    # The user can now use the vhost over AMQP with its new password.
    params = pika.ConnectionParameters(http_node.host, http_node.port, "vh1", pika.PlainCredentials("u1", "pw2"))
    conn = pika.BlockingConnection(params)
    conn.channel().queue_declare("u1-q")
    conn.close()
    assert api.ok("GET", "/api/queues/vh1/u1-q")["vhost"] == "vh1"
    publish_body = {"routing_key": "u1-q", "payload": "x", "payload_encoding": "string", "properties": {}}
    api.as_user("u1", "pw2").ok("POST", "/api/exchanges/vh1/amq.default/publish", publish_body)
    vhost = api.ok("GET", "/api/vhosts/vh1")
    assert vhost["messages"] == 1 and vhost["message_stats"]["publish"] == 1

    assert api.delete("/api/permissions/vh1/u1").status == 204
    assert api.get("/api/permissions/vh1/u1").status == 404
    assert api.delete("/api/users/u1").status == 204
    assert api.get("/api/users/u1").status == 404
    assert api.delete("/api/vhosts/vh1").status == 204
    assert api.get("/api/vhosts/vh1").status == 404
    assert api.get("/api/queues/vh1/u1-q").status == 404


def test_users_bulk_delete_and_password_hash(api: Api) -> None:
    for name in ("bulk1", "bulk2"):
        api.ok("PUT", f"/api/users/{name}", {"password": "x", "tags": ""})
    hashed = api.ok("GET", "/api/users/bulk1")
    # A user made from another's hash logs in with the same password.
    api.ok("PUT", "/api/users/bulk3", {"password_hash": hashed["password_hash"],
                                      "hashing_algorithm": hashed["hashing_algorithm"], "tags": "monitoring"})
    assert api.as_user("bulk3", "x").get("/api/whoami").body == {"name": "bulk3", "tags": ["monitoring"]}
    assert api.post("/api/users/bulk-delete", {"users": ["bulk1", "bulk2", "bulk3"]}).status == 204
    assert all(api.get(f"/api/users/{n}").status == 404 for n in ("bulk1", "bulk2", "bulk3"))


# --------------------------------------------------------------------------- policies and parameters


def test_policies(api: Api, amqp: pika.BlockingConnection) -> None:
    body = {"pattern": "^pol-", "definition": {"max-length": 1}, "apply-to": "queues", "priority": 3}
    assert api.put("/api/policies/%2F/p-len", body).status == 201
    assert api.put("/api/policies/%2F/p-len", body).status == 204
    expected = {"vhost": "/", "name": "p-len", "pattern": "^pol-", "apply-to": "queues",
                "definition": {"max-length": 1}, "priority": 3}
    assert api.ok("GET", "/api/policies/%2F/p-len") == expected
    assert expected in api.ok("GET", "/api/policies/%2F") and expected in api.ok("GET", "/api/policies")
    api.ok("PUT", "/api/queues/%2F/pol-q")
    for payload in ("a", "b", "c"):
        publish(api, "amq.default", "pol-q", payload)
    queue = api.ok("GET", "/api/queues/%2F/pol-q")
    assert queue["policy"] == "p-len" and queue["messages"] == 1
    invalid = api.put("/api/policies/%2F/p-bad", {"pattern": "^x", "definition": {"max-length": "x"}})
    assert invalid.status == 400 and invalid.body["reason"].startswith("Validation failed")
    assert api.delete("/api/policies/%2F/p-len").status == 204
    assert api.delete("/api/policies/%2F/p-len").status == 404


def test_parameters_and_limits_are_empty(api: Api) -> None:
    assert api.ok("GET", "/api/parameters") == []
    assert api.ok("GET", "/api/parameters/federation-upstream") == []
    assert api.ok("GET", "/api/parameters/federation-upstream/%2F") == []
    assert api.get("/api/parameters/federation-upstream/%2F/up").status == 404
    refused = api.put("/api/parameters/federation-upstream/%2F/up", {"value": {"uri": "amqp://"}})
    assert refused.status == 400 and "component federation-upstream not found" in refused.body["reason"]
    assert api.ok("GET", "/api/global-parameters") == []
    assert api.ok("GET", "/api/vhost-limits") == []


# --------------------------------------------------------------------------- definitions


def test_definitions_export_and_import(api: Api) -> None:
    api.ok("PUT", "/api/queues/%2F/def-q", {"durable": True, "arguments": {"x-max-length": 5}})
    exported = api.ok("GET", "/api/definitions")
    assert {"users", "vhosts", "permissions", "policies", "queues", "exchanges", "bindings"} <= set(exported)
    assert {"name": "def-q", "vhost": "/", "durable": True, "auto_delete": False, "type": "classic",
            "arguments": {"x-max-length": 5}} in exported["queues"]
    per_vhost = api.ok("GET", "/api/definitions/%2F")
    assert "users" not in per_vhost and any(x["name"] == "def-q" for x in per_vhost["queues"])
    document = {
        "vhosts": [{"name": "def-vh"}],
        "users": [{"name": "def-user", "password": "pw", "tags": "management"}],
        "permissions": [{"user": "def-user", "vhost": "def-vh", "configure": ".*", "write": ".*", "read": ".*"}],
        "queues": [{"name": "imported", "vhost": "def-vh", "durable": True, "auto_delete": False, "arguments": {}}],
        "exchanges": [{"name": "imported-x", "vhost": "def-vh", "type": "fanout", "durable": True,
                       "auto_delete": False, "internal": False, "arguments": {}}],
        "bindings": [{"source": "imported-x", "vhost": "def-vh", "destination": "imported",
                      "destination_type": "queue", "routing_key": "", "arguments": {}}],
    }
    assert api.post("/api/definitions", document).status == 204
    assert api.ok("GET", "/api/queues/def-vh/imported")["durable"] is True
    assert api.ok("GET", "/api/bindings/def-vh/e/imported-x/q/imported")[0]["source"] == "imported-x"
    assert api.as_user("def-user", "pw").get("/api/whoami").status == 200
    vhost_doc = {"queues": [{"name": "into-path-vhost", "durable": False, "auto_delete": False, "arguments": {}}]}
    assert api.post("/api/definitions/def-vh", vhost_doc).status == 204
    assert api.get("/api/queues/def-vh/into-path-vhost").status == 200
    assert api.post("/api/definitions", raw=b"[1]").body == {"error": "bad_request", "reason": "failed_to_parse_json"}
    broken = api.post("/api/definitions", {"queues": [{"vhost": "/"}]})
    assert broken.status == 400 and "has no 'name'" in broken.body["reason"]
    api.ok("DELETE", "/api/vhosts/def-vh")
    api.ok("DELETE", "/api/users/def-user")


# --------------------------------------------------------------------------- health


def test_aliveness_and_health_checks(api: Api, http_node: NodeProcess) -> None:
    assert api.ok("GET", "/api/aliveness-test/%2F") == {"status": "ok"}
    assert api.get("/api/aliveness-test/no-such-vhost").status == 404
    for check in ("alarms", "local-alarms", "virtual-hosts", "certificate-expiration/1/months"):
        assert api.ok("GET", f"/api/health/checks/{check}") == {"status": "ok"}, check
    assert api.ok("GET", f"/api/health/checks/port-listener/{http_node.port}") == {"status": "ok",
                                                                                  "port": http_node.port}
    missing = api.get("/api/health/checks/port-listener/1")
    assert missing.status == 503 and missing.body["status"] == "failed" and http_node.port in missing.body["ports"]
    assert api.ok("GET", "/api/health/checks/protocol-listener/amqp") == {"status": "ok", "protocol": "amqp"}
    assert api.get("/api/health/checks/protocol-listener/mqtt").status == 503
    for check in ("node-is-quorum-critical", "node-is-mirror-sync-critical"):
        assert api.ok("GET", f"/api/health/checks/{check}") == {"status": "ok", "reason": "single node cluster"}


# --------------------------------------------------------------------------- rates


def test_message_rates_follow_the_sampled_counters(api: Api) -> None:
    """The node samples counters every 5 s; a publish stream shows as a positive rate on the
    queue and in the overview within two samples."""
    api.ok("PUT", "/api/queues/%2F/rates-q")
    deadline = time.monotonic() + 15
    queue: dict = {}
    while time.monotonic() < deadline:
        for _ in range(20):
            publish(api, "amq.default", "rates-q", "tick")
        queue = api.ok("GET", "/api/queues/%2F/rates-q")
        if queue["message_stats"]["publish_details"]["rate"] > 0:
            break
        time.sleep(0.5)
    assert queue["message_stats"]["publish_details"]["rate"] > 0, queue["message_stats"]
    assert queue["messages_details"]["rate"] > 0 and queue["messages_ready_details"]["rate"] > 0
    overview = api.ok("GET", "/api/overview")
    assert overview["message_stats"]["publish_details"]["rate"] > 0
    assert overview["queue_totals"]["messages_details"]["rate"] > 0
    api.ok("DELETE", "/api/queues/%2F/rates-q")
