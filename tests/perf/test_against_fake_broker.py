"""The scenarios against a fake broker that misbehaves on purpose.

The generator's figures must follow what the broker really delivered: dropped
messages lower the delivered rate and are named as missing, duplicates and
garbled bodies are flagged and not counted. No assertion here is about speed.
"""

from __future__ import annotations

import trio

from cli.perf.memory import RssSampler
from cli.perf.scenarios import Options, run_scenario

from .fake_broker import FakeBroker, Misbehaviour

OPTIONS = Options(duration=0.3, procs=1, drain=3.0, connections=20, backlog_messages=500)


async def _run(scenario: str, broker: FakeBroker, options: Options = OPTIONS):
    async with trio.open_nursery() as nursery:
        await nursery.start(broker.serve)
        m = await run_scenario(scenario, broker.url, options, RssSampler(None))
        nursery.cancel_scope.cancel()
    return m


async def test_honest_broker_transient_everything_accounted() -> None:
    broker = FakeBroker()
    m = await _run("transient", broker)
    assert m.problems == []
    assert m.totals["sent"] == broker.truth.published > 0
    assert m.totals["delivered"] == broker.truth.deliveries == broker.truth.published
    assert m.totals["missing"] == 0
    assert m.metrics["delivered_per_s"] == m.totals["delivered_in_window"] / OPTIONS.duration


async def test_dropping_broker_shows_lower_delivered_figure_and_missing_messages() -> None:
    broker = FakeBroker(Misbehaviour(drop_every=2))
    m = await _run("transient", broker)
    assert broker.truth.dropped > 0
    assert m.totals["delivered"] == broker.truth.deliveries
    assert m.totals["missing"] == broker.truth.dropped
    # Half the messages were dropped: the delivered figure is about half the published one.
    assert m.metrics["delivered_per_s"] <= m.metrics["published_per_s"] / 2 + 1 / OPTIONS.duration
    assert any("never arrived" in p for p in m.problems)


async def test_broker_confirming_messages_it_lost_is_caught() -> None:
    broker = FakeBroker(Misbehaviour(drop_every=3))
    m = await _run("confirmed", broker)
    assert m.totals["acked"] == broker.truth.confirms == broker.truth.published
    assert m.totals["delivered"] == broker.truth.deliveries
    assert m.totals["lost_confirmed"] == broker.truth.dropped > 0
    assert m.metrics["delivered_per_s"] < m.metrics["confirmed_per_s"]
    assert any("confirmed messages were never delivered" in p for p in m.problems)


async def test_duplicates_are_flagged_not_counted() -> None:
    broker = FakeBroker(Misbehaviour(duplicate_every=4))
    m = await _run("transient", broker)
    assert broker.truth.duplicated > 0
    assert m.totals["duplicates"] == broker.truth.duplicated
    assert m.totals["delivered"] == broker.truth.published
    assert broker.truth.deliveries == m.totals["delivered"] + m.totals["duplicates"]
    assert any("duplicate" in p for p in m.problems)


async def test_garbled_bodies_are_flagged_not_counted() -> None:
    broker = FakeBroker(Misbehaviour(garble_every=5))
    m = await _run("transient", broker)
    assert broker.truth.garbled > 0
    assert m.totals["foreign"] == broker.truth.garbled
    assert m.totals["missing"] == broker.truth.garbled
    assert m.totals["delivered"] == broker.truth.published - broker.truth.garbled


async def test_fanout_counts_each_queue() -> None:
    broker = FakeBroker()
    m = await _run("fanout", broker)
    assert m.problems == []
    assert m.totals["delivered"] == 4 * m.totals["sent"] == broker.truth.deliveries


async def test_fanout_with_drops_counts_only_what_arrived() -> None:
    broker = FakeBroker(Misbehaviour(drop_every=10))
    m = await _run("fanout", broker)
    assert m.totals["delivered"] == broker.truth.deliveries == 4 * (broker.truth.published - broker.truth.dropped)
    assert m.totals["missing"] == 4 * broker.truth.dropped


async def test_latency_paced_and_measured() -> None:
    broker = FakeBroker()
    m = await _run("latency", broker, Options(duration=0.5, procs=1, drain=3.0))
    assert m.problems == []
    # Paced at 1,000 msg/s over 0.5 s: 500 messages, one due at the very start.
    assert 450 <= m.totals["sent"] <= 501
    assert m.totals["latency_samples"] == m.totals["delivered"]
    assert 0 < m.metrics["latency_p50_ms"] <= m.metrics["latency_p99_ms"] <= m.metrics["latency_p999_ms"]


async def test_connections_held_and_light_load_delivered() -> None:
    broker = FakeBroker()
    m = await _run("connections", broker)
    assert m.metrics["connections_held"] == 20
    assert m.totals["light_delivered"] == 20
    assert m.problems == []


async def test_backlog_publishes_then_drains_all() -> None:
    broker = FakeBroker()
    m = await _run("backlog", broker)
    assert m.problems == []
    assert m.totals["sent"] == m.totals["acked"] == m.totals["delivered"] == 500
    assert m.metrics["publish_per_s"] > 0 and m.metrics["drain_per_s"] > 0


async def test_backlog_with_losses_is_flagged() -> None:
    broker = FakeBroker(Misbehaviour(drop_every=100))
    m = await _run("backlog", broker, Options(duration=0.3, procs=1, drain=3.0, backlog_messages=500))
    assert m.totals["delivered"] == 495
    assert m.totals["lost_confirmed"] == 5


async def test_backlog_drained_out_of_order_is_flagged() -> None:
    broker = FakeBroker(Misbehaviour(swap_every=7))
    m = await _run("backlog", broker, Options(duration=0.3, procs=1, drain=3.0, backlog_messages=500))
    assert broker.truth.swapped > 0
    assert m.totals["delivered"] == 500  # nothing lost, but not in order
    assert m.totals["out_of_order"] == broker.truth.swapped
    assert any("published earlier" in p for p in m.problems)


async def test_mirrored_is_skipped_without_a_cluster() -> None:
    broker = FakeBroker()
    m = await _run("mirrored", broker)
    assert m.skipped is not None and "3-node cluster" in m.skipped
    assert "delivered_per_s" not in m.metrics


async def test_several_client_processes_account_like_one() -> None:
    broker = FakeBroker(Misbehaviour(drop_every=7))
    m = await _run("fanout", broker, Options(duration=0.5, procs=2, drain=3.0))
    assert m.totals["delivered"] == broker.truth.deliveries
    assert m.totals["missing"] == 4 * broker.truth.dropped
