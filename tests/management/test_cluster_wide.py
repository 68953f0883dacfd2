"""The management API answers for the whole cluster from any node: a mirrored (ha-all) and
a quorum queue led on node b are listed by node a's API with b's counts, mirrors, leader
and members, got from and purged through a, synchronised on request; /api/nodes shows each
member's own figures, and a member that is killed as not running; the metrics of the
leader's node carry the queue groups' Raft state and the store's fsync histogram; the web
UI of node a shows the mirrors and leader of queues b leads, and requests a sync.

One cluster for the module (forming one takes a while); the test that kills a node runs last.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cluster import joined_cluster
from tests.ctl.support import connect, wait_until
from tests.management.http import Api
from tests.support.browser import chromium_paths, headless_chromium
from tests.support.node_process import NodeProcess, wait_for_port

A, B, C = "cw-a@localhost", "cw-b@localhost", "cw-c@localhost"


@pytest.fixture(scope="module")
def cluster() -> Iterator[list[NodeProcess]]:
    with joined_cluster([NodeProcess(name=A).with_http(), NodeProcess(name=B).with_http(),
                         NodeProcess(name=C)]) as nodes:
        for n in nodes[:2]:
            wait_for_port(n.host, n.management_port, 10)
        yield nodes


@pytest.fixture(scope="module")
def queues(cluster: list[NodeProcess]) -> None:
    """ha.q (ha-all, automatic sync) and qq (quorum), declared on b so b leads them, with
    3 and 2 messages published on b."""
    a, b, _c = cluster
    Api(a.management_url).ok("PUT", "/api/policies/%2F/ha-all", {
        "pattern": r"^ha\.", "definition": {"ha-mode": "all", "ha-sync-mode": "automatic"}, "apply-to": "queues"})
    wait_until(lambda: Api(b.management_url).get("/api/policies/%2F/ha-all").status == 200)
    conn = connect(b)
    try:
        ch = conn.channel()
        ch.queue_declare("ha.q", durable=True)
        ch.queue_declare("qq", durable=True, arguments={"x-queue-type": "quorum"})
        ch.confirm_delivery()
        for queue, count in (("ha.q", 3), ("qq", 2)):
            for i in range(count):
                ch.basic_publish("", queue, b"m%d" % i, pika.BasicProperties(delivery_mode=2))
    finally:
        conn.close()


def settled(api: Api, path: str, check: Any, timeout: float = 30.0) -> Any:
    """GET `path` until `check(body)` holds (every 50 ms, `timeout` at most); the body."""
    seen: list[Any] = [None]

    def holds() -> bool:
        reply = api.get(path)
        seen[0] = reply.body
        return reply.status == 200 and bool(check(reply.body))

    try:
        wait_until(holds, timeout)
    except AssertionError:
        raise AssertionError(f"{path} never settled: {seen[0]}") from None
    return seen[0]


def test_queues_led_elsewhere_are_listed_counted_got_and_purged(cluster: list[NodeProcess], queues: None) -> None:
    a, b, c = cluster
    api = Api(a.management_url)
    ha = settled(api, "/api/queues/%2F/ha.q",
                 lambda q: q["messages"] == 3 and sorted(q["synchronised_slave_nodes"]) == [A, C])
    assert (ha["node"], ha["state"], ha["type"], ha["policy"]) == (B, "running", "classic", "ha-all")
    assert (ha["messages_ready"], ha["messages_unacknowledged"], ha["consumers"]) == (3, 0, 0)
    assert sorted(ha["slave_nodes"]) == [A, C] and sorted(ha["recoverable_slaves"]) == [A, C]
    assert ha["message_stats"]["publish"] == 3  # b's counters, not a's
    assert "leader" not in ha and "members" not in ha

    qq = settled(api, "/api/queues/%2F/qq", lambda q: q["messages"] == 2 and len(q["online"]) == 3)
    assert (qq["node"], qq["leader"], qq["type"], qq["state"]) == (B, B, "quorum", "running")
    assert sorted(qq["members"]) == [A, B, C] and qq["policy"] is None
    assert (qq["messages_ready"], qq["messages_unacknowledged"], qq["consumers"]) == (2, 0, 0)
    assert "slave_nodes" not in qq

    # The list, the overview and the vhost count them too.
    listed = {q["name"]: q for q in api.ok("GET", "/api/queues/%2F")}
    assert (listed["ha.q"]["messages"], listed["qq"]["messages"]) == (3, 2)
    assert listed["ha.q"]["synchronised_slave_nodes"] == ha["synchronised_slave_nodes"]
    assert api.ok("GET", "/api/overview")["queue_totals"]["messages"] == 5
    assert api.ok("GET", "/api/vhosts/%2F")["messages"] == 5

    # A consumer on c (not the leader's node): a counts it and its unacknowledged message.
    conn = connect(c)
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=1)
        ch.basic_consume("ha.q", lambda *args: None)
        conn.process_data_events(0.2)
        settled(api, "/api/queues/%2F/ha.q", lambda q: q["consumers"] == 1 and q["messages_unacknowledged"] == 1
                and q["messages_ready"] == 2)
    finally:
        conn.close()
    settled(api, "/api/queues/%2F/ha.q", lambda q: q["consumers"] == 0 and q["messages_ready"] == 3)

    # Get through a: requeued, then taken for good.
    got = api.ok("POST", "/api/queues/%2F/qq/get", {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert [(m["payload"], m["redelivered"], m["message_count"]) for m in got] == [("m0", False, 1)]
    settled(api, "/api/queues/%2F/qq", lambda q: q["messages_ready"] == 2 and q["messages_unacknowledged"] == 0)
    got = api.ok("POST", "/api/queues/%2F/qq/get", {"count": 5, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert [(m["payload"], m["redelivered"]) for m in got] == [("m0", True), ("m1", False)]
    settled(api, "/api/queues/%2F/qq", lambda q: q["messages"] == 0)

    # Purge through a; b's own API agrees.
    assert api.delete("/api/queues/%2F/ha.q/contents").status == 204
    settled(api, "/api/queues/%2F/ha.q", lambda q: q["messages"] == 0)
    assert Api(b.management_url).ok("GET", "/api/queues/%2F/ha.q")["messages"] == 0

    # Queue actions go to the leader; an unknown one is refused.
    for action in ("sync", "cancel_sync"):
        assert api.post("/api/queues/%2F/ha.q/actions", {"action": action}).status == 204
    assert api.post("/api/queues/%2F/qq/actions", {"action": "sync"}).status == 204
    refused = api.post("/api/queues/%2F/ha.q/actions", {"action": "nope"})
    assert refused.status == 400 and refused.body["error"] == "bad_request"


def scrape(node: NodeProcess, path: str = "/metrics") -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(node.prometheus_url + path, timeout=30) as resp:
        text = resp.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_metrics_carry_queue_groups_partitions_and_fsync_latency(cluster: list[NodeProcess], queues: None) -> None:
    a, b, _c = cluster
    samples = scrape(b)
    info = {dict(labels)["queue"]: dict(labels) for labels in samples["leveret_raft_group_info"]}
    assert set(info) >= {"", "ha.q", "qq"} and info["qq"]["leader"] == B and info["qq"]["vhost"] == "/"
    group = (("group", info["qq"]["group"]),)
    assert samples["leveret_raft_group_is_leader"][group] == 1
    assert samples["leveret_raft_group_voters"][group] == 3
    assert samples["leveret_raft_group_followers"][group] == 2
    wait_until(lambda: scrape(b)["leveret_raft_group_synchronised_followers"][group] == 2, 20)
    assert samples["leveret_raft_group_term"][group] >= 1
    lagging = {dict(labels)["follower"] for labels in samples["leveret_raft_group_follower_lag"]
               if dict(labels)["group"] == info["qq"]["group"]}
    assert lagging == {A, "cw-c@localhost"}
    # Partitions as b sees them: every peer link up.
    assert samples["leveret_cluster_members"][()] == 3
    assert samples["leveret_cluster_peers_unreachable"][()] == 0
    assert {dict(k)["peer"]: v for k, v in samples["leveret_cluster_peer_reachable"].items()} == {A: 1, C: 1}
    # The store writer's durable writes, timed: a histogram whose +Inf bucket is its count.
    count = samples["leveret_store_writer_fsync_seconds_count"][()]
    assert count >= 1 and samples["leveret_store_writer_fsync_seconds_sum"][()] > 0
    assert samples["leveret_store_writer_fsync_seconds_bucket"][(("le", "+Inf"),)] == count
    # Queue metrics come from the node leading the queue: b reports qq, a does not.
    assert (("queue", "qq"), ("vhost", "/")) in scrape(b, "/metrics/per-object")["rabbitmq_queue_messages"]
    assert (("queue", "qq"), ("vhost", "/")) not in scrape(a, "/metrics/per-object").get("rabbitmq_queue_messages", {})
    # A follower's view of the group: no leadership, the leader named.
    on_a = scrape(a)
    assert on_a["leveret_raft_group_is_leader"][group] == 0
    assert any(dict(labels).get("group") == group[0][1] and dict(labels)["leader"] == B
               for labels in on_a["leveret_raft_group_info"])


def test_the_ui_shows_mirrors_leader_and_sync_state_of_queues_led_elsewhere(cluster: list[NodeProcess],
                                                                            queues: None) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    paths, why = chromium_paths()
    if paths is None:
        pytest.skip(f"chromium could not be installed: {why}")
    a = cluster[0]
    settled(Api(a.management_url), "/api/queues/%2F/ha.q", lambda q: len(q["synchronised_slave_nodes"]) == 2)
    browser = headless_chromium(*paths)
    try:
        wait = WebDriverWait(browser, 20)
        browser.get(a.management_url + "/")
        wait.until(ec.presence_of_element_located((By.ID, "login")))
        browser.find_element(By.ID, "username").send_keys("guest")
        browser.find_element(By.ID, "password").send_keys("guest")
        browser.find_element(By.ID, "login-button").click()
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "h1"), "Overview"))
        browser.get(a.management_url + "/#/queues")
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "main"), f"leader {B}; members"))
        text = browser.find_element(By.TAG_NAME, "main").text
        assert f"{B}; mirrors: " in text and f"{A} (synchronised)" in text and f"{C} (synchronised)" in text
        # The queue's page offers to synchronise its mirrors; the request goes to b, its leader.
        browser.get(a.management_url + "/#/queue/%2F/ha.q")
        wait.until(ec.element_to_be_clickable((By.ID, "sync"))).click()
        wait.until(ec.alert_is_present()).accept()
        wait.until(ec.text_to_be_present_in_element((By.TAG_NAME, "body"), "Synchronisation requested"))
    finally:
        browser.quit()


def test_nodes_show_each_member_and_a_killed_one_as_not_running(cluster: list[NodeProcess], queues: None) -> None:
    a, b, c = cluster
    api = Api(a.management_url)
    nodes = {n["name"]: n for n in api.ok("GET", "/api/nodes")}
    assert sorted(nodes) == [A, B, C] and all(n["running"] for n in nodes.values())
    # Each member's own figures, asked of it.
    assert {name: n["os_pid"] for name, n in nodes.items()} == {n.name: str(n.proc.pid) for n in cluster}
    assert all(n["partitions"] == [] and n["mem_used"] > 0 for n in nodes.values())
    assert nodes[B]["contexts"][0]["port"] == str(b.management_port) and nodes[C]["contexts"] == []

    c.kill()
    down = settled(api, "/api/nodes", lambda ns: [n["running"] for n in ns] == [True, True, False])
    assert down[2] == {"name": C, "type": "disc", "running": False, "cluster_links": []}
    assert api.ok("GET", f"/api/nodes/{B}")["running"] is True
    # The queues are still listed, c's mirror no longer among ha.q's running ones.
    ha = settled(api, "/api/queues/%2F/ha.q", lambda q: q["slave_nodes"] == [A])
    assert sorted(ha["recoverable_slaves"]) == [A, C] and ha["state"] == "running"
    qq = settled(api, "/api/queues/%2F/qq", lambda q: sorted(q["online"]) == [A, B])
    assert sorted(qq["members"]) == [A, B, C]
    assert api.get("/api/overview").status == 200
