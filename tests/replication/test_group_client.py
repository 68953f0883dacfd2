"""Forwarded proposals: any node commits through the leader and answers once applied locally.

Three (or four) Raft drivers in one process over `MemoryNetwork`, peer calls routed in
process with the same partitions, on trio's MockClock: deterministic."""

from __future__ import annotations

import trio
import trio.testing

from cluster.group_client import Unavailable
from cluster.raft.driver import Applied
from cluster.raft.group import ConfChange, Refused

from .harness import GROUP, journal, leader, start


async def test_a_follower_forwards_and_answers_after_applying_locally(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c"), ("a", "b", "c"))
        lead = await leader(drivers)
        follower = next(n for n in drivers if n != lead)
        for i in range(20):
            outcome = await clients[follower].propose(GROUP, b"x%d" % i)
            assert isinstance(outcome, Applied) and outcome.result == i + 1
            # Applied on the asking node before the answer, not only on the leader.
            assert journal(drivers[follower])[-1] == b"x%d" % i
        assert clients[follower].peers.calls == 20  # type: ignore[attr-defined]
        nursery.cancel_scope.cancel()


async def test_a_node_cut_off_from_the_majority_refuses_within_the_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c"), ("a", "b", "c"))
        lead = await leader(drivers)
        assert isinstance(await clients[lead].propose(GROUP, b"before"), Applied)
        # The leader itself is cut off: its entry can never commit.
        net.down.add(lead)
        started = trio.current_time()
        outcome = await clients[lead].propose(GROUP, b"stranded")
        assert isinstance(outcome, Unavailable) and "not committed within 5 s" in outcome.reason
        assert trio.current_time() - started <= 5.0 + 0.1
        # The majority goes on, through either of its nodes.
        rest = [n for n in drivers if n != lead]
        assert isinstance(await clients[rest[0]].propose(GROUP, b"majority"), Applied)
        net.down.clear()
        await trio.sleep(2)
        logs = {n: journal(d) for n, d in drivers.items()}
        assert logs[rest[0]] == logs[rest[1]] == logs[lead] == [b"before", b"majority"]
        nursery.cancel_scope.cancel()


async def test_a_partitioned_follower_refuses_then_catches_up(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c"), ("a", "b", "c"))
        lead = await leader(drivers)
        follower = next(n for n in drivers if n != lead)
        net.down.add(follower)
        assert isinstance(await clients[follower].propose(GROUP, b"lost"), Unavailable)
        assert isinstance(await clients[lead].propose(GROUP, b"kept"), Applied)
        net.down.clear()
        await trio.sleep(2)
        assert journal(drivers[follower]) == [b"kept"]
        nursery.cancel_scope.cancel()


async def test_a_new_node_joins_as_learner_then_voter_from_any_member(
        autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c", "d"), ("a", "b", "c"))
        lead = await leader(drivers)
        for i in range(30):
            assert isinstance(await clients[lead].propose(GROUP, b"%d" % i), Applied)
        follower = next(n for n in ("a", "b", "c") if n != lead)
        assert isinstance(await clients[follower].change_membership(GROUP, ConfChange("add_learner", "d")), Applied)
        for _ in range(100):
            outcome = await clients[follower].change_membership(GROUP, ConfChange("promote", "d"))
            if isinstance(outcome, Applied):
                break
            assert isinstance(outcome, Refused) and "caught up" in outcome.reason
            await trio.sleep(0.05)
        else:
            raise AssertionError("the learner never caught up")
        status = drivers[lead].node.status(GROUP)
        assert status.voters == {"a", "b", "c", "d"} and not status.learners
        assert journal(drivers["d"]) == journal(drivers[lead])
        # The new voter forwards like any other member.
        outcome = await clients["d"].propose(GROUP, b"from d")
        assert isinstance(outcome, Applied) and journal(drivers["d"])[-1] == b"from d"
        nursery.cancel_scope.cancel()


async def test_a_malformed_forward_is_refused_not_applied(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        net, drivers, clients = await start(nursery, ("a", "b", "c"), ("a", "b", "c"))
        lead = await leader(drivers)
        handlers = clients[lead].handlers()
        assert "refused" in await handlers["raft.propose"]({"group": GROUP, "data": "not bytes"})
        assert "refused" in await handlers["raft.change_membership"]({"group": GROUP, "op": "explode", "node": "x"})
        await trio.sleep(1)
        assert journal(drivers[lead]) == []
        nursery.cancel_scope.cancel()
