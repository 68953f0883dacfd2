"""cluster.replica_listing: list_queues' replica items as rabbitmqctl 3.10.8 prints them
(tests/ctl/rabbitmq-3.10.8-mirrored-list-queues.txt), and rabbitmq-queues' box table."""

from __future__ import annotations

from cli.ctl_format import box_lines
from cluster.mirrors import pid_text
from cluster.replica_listing import replica_items


def pid(node: str) -> str:
    return pid_text(node, ("/", "q"))


def items(**kw: object) -> dict:
    base: dict = dict(vhost="/", name="q", queue_type="classic", mirrored=True, leader="a",
                      replicas=("a", "b", "c"), running={"a", "b", "c"}, voters={"a", "b", "c"},
                      match={"b": 7, "c": 7}, commit=7)
    base.update(kw)
    return replica_items(**base)


def test_a_mirrored_queue_lists_its_followers_and_those_caught_up() -> None:
    got = items(match={"b": 7, "c": 6})
    assert got["pid"] == pid("a")
    assert got["slave_pids"] == [pid("b"), pid("c")]
    assert got["synchronised_slave_pids"] == [pid("b")]
    assert (got["leader"], got["members"], got["online"]) == ("", "", "")
    assert got["synchronised_nodes"] == ["a", "b"]


def test_a_replica_not_yet_a_voter_is_listed_but_not_synchronised() -> None:
    # ha-sync-mode manual: c is in the replica set, not in the Raft group until sync_queue.
    got = items(voters={"a", "b"}, match={"b": 7})
    assert got["slave_pids"] == [pid("b"), pid("c")] and got["synchronised_slave_pids"] == [pid("b")]
    # A learner that has every entry is still no voter.
    assert items(voters={"a", "b"}, match={"b": 7, "c": 9})["synchronised_slave_pids"] == [pid("b")]


def test_a_follower_on_a_node_that_is_down_is_not_listed() -> None:
    got = items(running={"a", "b"})
    assert got["slave_pids"] == [pid("b")] and got["synchronised_slave_pids"] == [pid("b")]
    # By node, for the management API: the running followers, and every follower it may recover.
    assert got["follower_nodes"] == ["b"] and got["replica_followers"] == ["b", "c"]
    # No mirror at all: [] (not empty text), as RabbitMQ lists ha-nodes.q with its mirror down.
    lonely = items(running={"a"})
    assert lonely["slave_pids"] == [] and lonely["synchronised_slave_pids"] == []


def test_plain_and_quorum_queues() -> None:
    plain = items(mirrored=False, replicas=())
    assert (plain["slave_pids"], plain["synchronised_slave_pids"], plain["leader"], plain["members"],
            plain["online"]) == ("", "", "", "", "")
    quorum = items(queue_type="quorum", mirrored=False, leader="b", replicas=("a", "c", "b"), running={"b", "c"})
    assert quorum["pid"] == pid("b")
    assert (quorum["slave_pids"], quorum["synchronised_slave_pids"]) == ("", "")
    assert quorum["leader"] == "b" and quorum["members"] == ["a", "c", "b"] and quorum["online"] == ["c", "b"]


def test_box_lines_are_rabbitmq_queues_bytes() -> None:
    # `rabbitmq-queues rebalance all` on a 3.10.8 cluster, its stdout to a pipe, byte for byte.
    recorded = [
        'Re-balancing leaders of all queues...',
        '\x1b(0lqqqqqqqqqqqqqqqqqwqqqqqqqqqqqqqqqqqqqqqqqqqwqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqk\x1b(B',
        '\x1b(0x\x1b(B \x1b[1mNode name\x1b[0m       \x1b(0x\x1b(B \x1b[1mNumber of quorum queues\x1b[0m \x1b(0x\x1b(B \x1b[1mNumber of replicated classic queues\x1b[0m \x1b(0x\x1b(B',
        '\x1b(0tqqqqqqqqqqqqqqqqqnqqqqqqqqqqqqqqqqqqqqqqqqqnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqu\x1b(B',
        '\x1b(0x\x1b(B qref3@localhost \x1b(0x\x1b(B 0                       \x1b(0x\x1b(B 2                                   \x1b(0x\x1b(B',
        '\x1b(0tqqqqqqqqqqqqqqqqqnqqqqqqqqqqqqqqqqqqqqqqqqqnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqu\x1b(B',
        '\x1b(0x\x1b(B qref2@localhost \x1b(0x\x1b(B 1                       \x1b(0x\x1b(B 1                                   \x1b(0x\x1b(B',
        '\x1b(0tqqqqqqqqqqqqqqqqqnqqqqqqqqqqqqqqqqqqqqqqqqqnqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqu\x1b(B',
        '\x1b(0x\x1b(B qref1@localhost \x1b(0x\x1b(B 2                       \x1b(0x\x1b(B 1                                   \x1b(0x\x1b(B',
        '\x1b(0mqqqqqqqqqqqqqqqqqvqqqqqqqqqqqqqqqqqqqqqqqqqvqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqj\x1b(B',
    ]
    rows = [["qref3@localhost", 0, 2], ["qref2@localhost", 1, 1], ["qref1@localhost", 2, 1]]
    assert recorded[0] == "Re-balancing leaders of all queues..."
    assert box_lines(("Node name", "Number of quorum queues", "Number of replicated classic queues"), rows) == \
        recorded[1:]
