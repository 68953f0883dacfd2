"""leveretctl on a three-node cluster with mirrored and quorum queues: list_queues' replica
items (table and JSON, as rabbitmqctl 3.10.8 prints them, see
rabbitmq-3.10.8-mirrored-list-queues.txt) asked of any node, after the leader's node is
killed, manual sync with sync_queue / cancel_sync_queue, and rebalance_queues."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from cli.ctl_format import box_lines
from cluster.mirrors import pid_text
from tests.support.cluster import NAMES, joined_cluster
from tests.ctl.support import connect, ctl, ok, wait_until
from tests.support.node_process import NodeProcess

A, B, C = NAMES
COLUMNS = ("name", "pid", "slave_pids", "synchronised_slave_pids", "type", "leader", "members", "online",
           "messages", "state")


@pytest.fixture
def cluster() -> Iterator[list[NodeProcess]]:
    with joined_cluster([NodeProcess(name=n) for n in NAMES]) as nodes:
        yield nodes


def pid(node: str, queue: str) -> str:
    return pid_text(node, ("/", queue))


def rows(node: NodeProcess, *args: str) -> dict[str, dict[str, Any]]:
    listed = json.loads(ok(node, "list_queues", *COLUMNS, *args, "--formatter", "json").out)
    return {r["name"]: r for r in listed}


def settled(node: NodeProcess, check: Any, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """The listing once `check(rows)` holds (asked again every 50 ms, `timeout` at most)."""
    seen: list[dict[str, dict[str, Any]]] = []

    def holds() -> bool:
        seen[:] = [rows(node)]
        return bool(check(seen[0]))

    try:
        wait_until(holds, timeout)
    except AssertionError:
        raise AssertionError(f"listing never settled: {seen}") from None
    return seen[0]


def publish(node: NodeProcess, queue: str, count: int) -> None:
    conn = connect(node)
    ch = conn.channel()
    ch.confirm_delivery()
    for i in range(count):
        ch.basic_publish("", queue, b"m%d" % i, pika.BasicProperties(delivery_mode=2))
    conn.close()


def declare(node: NodeProcess, queue: str, **arguments: Any) -> None:
    conn = connect(node)
    conn.channel().queue_declare(queue, durable=True, arguments=arguments or None)
    conn.close()


def test_replica_items_from_any_node_and_after_the_leader_is_killed(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    ok(a, "set_policy", "ha-all", r"^ha\.", '{"ha-mode":"all","ha-sync-mode":"automatic"}', "--apply-to", "queues")
    declare(a, "ha.q")
    declare(a, "qq", **{"x-queue-type": "quorum"})
    declare(a, "plain")
    publish(a, "ha.q", 3)
    publish(b, "qq", 2)
    publish(c, "plain", 1)

    expected = {
        "ha.q": {"name": "ha.q", "pid": pid(A, "ha.q"), "slave_pids": [pid(B, "ha.q"), pid(C, "ha.q")],
                 "synchronised_slave_pids": [pid(B, "ha.q"), pid(C, "ha.q")], "type": "classic", "leader": "",
                 "members": "", "online": "", "messages": 3, "state": "running"},
        "qq": {"name": "qq", "pid": pid(A, "qq"), "slave_pids": "", "synchronised_slave_pids": "",
               "type": "quorum", "leader": A, "members": [A, B, C], "online": [A, B, C], "messages": 2,
               "state": "running"},
        "plain": {"name": "plain", "pid": pid(A, "plain"), "slave_pids": "", "synchronised_slave_pids": "",
                  "type": "classic", "leader": "", "members": "", "online": "", "messages": 1, "state": "running"},
    }
    # Every node lists every queue as its leader (a) sees it: counts and synchronised mirrors too.
    for node in cluster:
        assert settled(node, lambda r: r == expected) == expected
    table = ok(c, "-q", "list_queues", *COLUMNS).lines
    assert table[0] == "\t".join(COLUMNS)
    assert f"ha.q\t{pid(A, 'ha.q')}\t[{pid(B, 'ha.q')}, {pid(C, 'ha.q')}]\t[{pid(B, 'ha.q')}, {pid(C, 'ha.q')}]" \
           "\tclassic\t\t\t\t3\trunning" in table
    assert f"qq\t{pid(A, 'qq')}\t\t\tquorum\t{A}\t[{A}, {B}, {C}]\t[{A}, {B}, {C}]\t2\trunning" in table
    assert f"plain\t{pid(A, 'plain')}\t\t\tclassic\t\t\t\t1\trunning" in table
    # --local: the queues the node asked leads.
    assert ok(b, "-s", "list_queues", "name", "--local").out == ""
    assert sorted(ok(a, "-s", "list_queues", "name", "--local").lines) == ["ha.q", "plain", "qq"]

    a.kill()
    after = settled(b, lambda r: r["ha.q"]["pid"] != pid(A, "ha.q") and r["qq"]["leader"] not in ("", A)
                    and r["ha.q"]["state"] == "running" and r["qq"]["online"] == [B, C])
    # The survivors elected leaders; each lists the other survivor as its only mirror, synchronised.
    new_ha = after["ha.q"]["pid"]
    assert new_ha in (pid(B, "ha.q"), pid(C, "ha.q"))
    other = pid(C, "ha.q") if new_ha == pid(B, "ha.q") else pid(B, "ha.q")
    assert after["ha.q"]["slave_pids"] == [other] and after["ha.q"]["synchronised_slave_pids"] == [other]
    assert after["ha.q"]["messages"] == 3
    qq = after["qq"]
    assert qq["members"] == [A, B, C] and qq["pid"] == pid(qq["leader"], "qq") and qq["messages"] == 2
    # The plain queue lived on a alone: down, as RabbitMQ lists a queue on an unreachable node.
    assert after["plain"]["state"] == "down" and after["plain"]["pid"] == pid(A, "plain")
    assert ok(c, "-s", "list_queues", "name", "--offline").lines == ["plain"]


def test_manual_sync_and_sync_queue_texts(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    declare(a, "manual.q")
    publish(a, "manual.q", 3)
    declare(a, "plain")
    declare(a, "qq", **{"x-queue-type": "quorum"})
    # The policy comes after the messages: the new mirrors hold nothing, and manual sync
    # copies nothing until asked.
    ok(a, "set_policy", "ha-manual", r"^manual\.", '{"ha-mode":"all","ha-sync-mode":"manual"}',
       "--apply-to", "queues")
    mirrors = [pid(B, "manual.q"), pid(C, "manual.q")]
    unsynced = settled(c, lambda r: r["manual.q"]["slave_pids"] == mirrors)
    assert unsynced["manual.q"]["synchronised_slave_pids"] == [] and unsynced["manual.q"]["messages"] == 3
    assert ok(c, "-q", "list_queues", "name", "slave_pids", "synchronised_slave_pids").lines[1:].count(
        f"manual.q\t[{mirrors[0]}, {mirrors[1]}]\t[]") == 1
    # Still unsynchronised a while later: nothing syncs a manual queue by itself.
    for _ in range(5):
        assert rows(b)["manual.q"]["synchronised_slave_pids"] == []

    # Asked of a node that does not lead the queue: the leader (a) adds its mirrors.
    r = ok(c, "sync_queue", "manual.q")
    assert r.out == "Synchronising queue 'manual.q' in vhost '/' ...\n"
    synced = settled(b, lambda r: r["manual.q"]["synchronised_slave_pids"] == mirrors)
    assert synced["manual.q"]["messages"] == 3 and synced["manual.q"]["pid"] == pid(A, "manual.q")
    assert json.loads(ok(b, "sync_queue", "manual.q", "--formatter", "json").out) == {"node": B, "result": "ok"}

    # cancel_sync_queue with nothing under way, and the refusals, as rabbitmqctl 3.10.8 words them.
    r = ok(b, "cancel_sync_queue", "manual.q")
    assert r.out == "Stopping synchronising queue 'manual.q' in vhost '/' ...\nnot_syncing\n"
    assert json.loads(ok(b, "cancel_sync_queue", "plain", "--formatter", "json").out) == {
        "node": B, "result": "ok", "value": "not_syncing"}
    for command, queue, text in (("sync_queue", "nosuch", "not_found"), ("cancel_sync_queue", "nosuch", "not_found"),
                                 ("sync_queue", "plain", "not_mirrored"),
                                 ("sync_queue", "qq", "quorum_queue_not_supported"),
                                 ("cancel_sync_queue", "qq", "quorum_queue_not_supported")):
        r = ctl(b, "-q", command, queue)
        assert (r.code, r.out, r.err) == (69, "", f"Error:\n{text}\n"), (command, queue, r)
    r = ctl(b, "sync_queue", "-p", "nov", "q")
    assert (r.code, r.out, r.err) == (69, "Synchronising queue 'q' in vhost 'nov' ...\n", "Error:\nnot_found\n")


def test_rebalance_moves_leaders_to_even_out_the_nodes(cluster: list[NodeProcess]) -> None:
    a, b, c = cluster
    ok(a, "set_policy", "ha-all", r"^ha\.", '{"ha-mode":"all","ha-sync-mode":"automatic"}', "--apply-to", "queues")
    quorum = [f"qq.{i}" for i in range(4)]
    mirrored = ["ha.0", "ha.1"]
    for q in quorum:
        declare(a, q, **{"x-queue-type": "quorum"})
    for q in mirrored:
        declare(a, q)
    names = quorum + mirrored
    # Every queue led by a, every replica synchronised (empty queues sync at once).
    settled(b, lambda r: all(r[q]["pid"] == pid(A, q) for q in names)
            and all(len(r[q]["synchronised_slave_pids"]) == 2 for q in mirrored))

    r = ok(b, "rebalance_queues", "--formatter", "json")
    summary = json.loads(r.out)
    assert summary["node"] == B and summary["result"] == "ok"
    value = summary["value"]
    assert [row[0] for row in value] == [["Node name", C], ["Node name", B], ["Node name", A]]
    assert [sum(cell[1] for cell in row[1:]) for row in value] == [2, 2, 2]
    assert sum(row[1][1] for row in value) == 4 and sum(row[2][1] for row in value) == 2
    leaders = {n: r["pid"] for n, r in rows(c).items()}
    assert sorted(leaders[q][1:].split("@")[0] for q in names) == ["a", "a", "b", "b", "c", "c"]

    # Balanced already: nothing moves, the table form (rabbitmq-queues' box drawing) shows the same.
    r = ok(b, "rebalance_queues")
    counts = [(row[0][1], row[1][1], row[2][1]) for row in value]
    assert r.out.splitlines() == ["Re-balancing leaders of all queues...",
                                  *box_lines(("Node name", "Number of quorum queues",
                                              "Number of replicated classic queues"), counts)]
    # Patterns that select no queue: rabbitmq-queues' empty result.
    r = ok(b, "rebalance_queues", "--queue-pattern", "^nomatch$")
    assert r.out.splitlines()[1:] == box_lines(("Output",), [["[]"]])
    r = ctl(b, "rebalance_queues", "bogus")
    assert (r.code, r.err) == (69, "Error:\ntype bogus is not supported. Try one of all, classic, quorum.\n")
