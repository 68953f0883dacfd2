"""Issue 12 item 6: arguments nested hundreds deep are refused where they enter, and every
renderer of stored argument tables is bounded, so one queue cannot break a vhost's listings.

A queue declared with arguments nested 300-490 deep used to be accepted (the decoder
gave up only past ~490 levels, where Python's stack ran out), and afterwards
`leveretctl list_queues` failed for the whole vhost with a RecursionError."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from broker.control_handlers import import_commands, plain, typed_table
from cli.ctl_format import cell, json_rows
from cluster import metadata as md
from cluster.nesting import ELIDED, MAX_TABLE_DEPTH, nesting_depth
from cluster.policy import validate_definition
from broker.node import Node
from tests.ctl.support import connect, ok
from tests.support.in_process import run_node_once
from tests.support.node_process import NodeProcess, scratch_dir


def nested(levels: int, leaf: Any = "leaf", *, arrays: bool = False) -> Any:
    """A value with `levels` tables (or arrays) around `leaf`, built without recursion."""
    value = leaf
    for _ in range(levels):
        value = [value] if arrays else {"k": value}
    return value


@pytest.fixture(scope="module")
def node() -> Iterator[NodeProcess]:
    with NodeProcess(name="nested-args@localhost").start() as proc:
        yield proc


def _declare(node: NodeProcess, queue: str, arguments: dict[str, Any]) -> tuple[int, str] | None:
    """queue.declare on a fresh connection: None if declared, else the connection error."""
    conn = connect(node)
    try:
        conn.channel().queue_declare(queue, arguments=arguments)
    except pika.exceptions.ConnectionClosedByBroker as exc:
        return exc.reply_code, exc.reply_text
    conn.close()
    return None


@pytest.mark.parametrize("levels", [MAX_TABLE_DEPTH, 300, 400])  # pika itself cannot encode 490
def test_declare_nested_beyond_the_bound_is_refused_and_listings_still_work(node: NodeProcess, levels: int) -> None:
    # The arguments table itself is the first level.
    refusal = _declare(node, f"deep-{levels}", {"x-deep": nested(levels)})
    assert refusal == (502, "SYNTAX_ERROR - field tables nested too deeply")
    refusal = _declare(node, f"deep-array-{levels}", {"x-deep": nested(levels, arrays=True)})
    assert refusal == (502, "SYNTAX_ERROR - field tables nested too deeply")
    # The same value as a message header is refused alike (it is re-encoded on delivery).
    conn = connect(node)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        conn.channel().basic_publish("", "nowhere", b"x", pika.BasicProperties(headers={"h": nested(levels)}))
        conn.process_data_events(time_limit=1)
        conn.channel()  # a round trip, so the close arrives
    assert info.value.reply_code == 502

    names = ok(node, "list_queues", "name", "--formatter", "json").out
    assert f"deep-{levels}" not in names


def test_declare_at_the_bound_is_accepted_and_listed(node: NodeProcess) -> None:
    assert _declare(node, "deep-at-bound", {"x-deep": nested(MAX_TABLE_DEPTH - 1)}) is None
    rows = json.loads(ok(node, "list_queues", "name", "arguments", "--formatter", "json").out)
    assert [r["name"] for r in rows if r["name"] == "deep-at-bound"] == ["deep-at-bound"]
    table = ok(node, "list_queues", "name", "arguments").out
    assert "deep-at-bound" in table and '"leaf"' in table
    definitions = json.loads(ok(node, "export_definitions", "-").out)
    exported = next(q for q in definitions["queues"] if q["name"] == "deep-at-bound")
    assert nesting_depth(exported["arguments"]) == MAX_TABLE_DEPTH


def test_import_of_definitions_nested_beyond_the_bound_is_refused() -> None:
    for kind, item in [
        ("queues", {"name": "q", "vhost": "/", "arguments": {"x": nested(300)}}),
        ("exchanges", {"name": "x", "vhost": "/", "type": "direct", "arguments": {"x": nested(300)}}),
        ("bindings", {"source": "x", "vhost": "/", "destination": "q", "destination_type": "queue",
                      "arguments": {"x": nested(300)}}),
    ]:
        with pytest.raises(ValueError, match="nested too deeply"):
            import_commands({kind: [item]}, "n@h", md.MetadataState())
    at_bound = {"queues": [{"name": "q", "vhost": "/", "arguments": {"x": nested(MAX_TABLE_DEPTH - 1)}}]}
    assert len(import_commands(at_bound, "n@h", md.MetadataState())) == 1


# A store written before the bound (or any value handed to a renderer) may be deeper still:
# every renderer stops at the bound with Erlang's "..." instead of recursing on.


async def test_a_queue_stored_deeper_before_the_bound_still_lists() -> None:
    data_dir = scratch_dir()
    name = "nested-store@localhost"

    async def declare_as_before(node: Node) -> None:
        # The metadata applies what its log holds; the bound is checked before proposing.
        result = await node.propose_metadata(md.DeclareQueue("/", "deep-stored", True, False, None,
                                                             {"x-deep": nested(400)}, node.name))
        assert not isinstance(result, md.Refusal)

    await run_node_once(data_dir, name, declare_as_before)
    with NodeProcess(name=name, data_dir=data_dir).start() as node:
        for columns in (["name"], ["name", "arguments"]):
            for formatter in ("table", "json"):
                out = ok(node, "list_queues", *columns, "--formatter", formatter).out
                assert "deep-stored" in out
        assert ELIDED in ok(node, "list_queues", "name", "arguments").out
        definitions = json.loads(ok(node, "export_definitions", "-").out)
        [queue] = [q for q in definitions["queues"] if q["name"] == "deep-stored"]
        assert nesting_depth(queue["arguments"]) == MAX_TABLE_DEPTH


@pytest.mark.parametrize("arrays", [False, True])
def test_renderers_are_bounded_for_values_deeper_than_any_stack(arrays: bool) -> None:
    deep = {"x-deep": nested(5000, arrays=arrays)}
    rows = typed_table(deep)
    exported = plain(deep)
    assert nesting_depth(exported) == MAX_TABLE_DEPTH and ELIDED in json.dumps(exported)
    text = cell("arguments", rows)
    assert text.startswith('[{"x-deep",') and ELIDED in text
    listed = json.loads(json_rows([{"name": "q", "arguments": rows}], ["name", "arguments"]))
    assert listed[0]["name"] == "q"
    assert nesting_depth(deep) == 5001
    # A policy definition's unknown key is quoted back in the refusal.
    invalid = validate_definition({"not-a-key": nested(5000, arrays=arrays)})
    assert invalid is not None and ELIDED in invalid.text


def test_a_refusal_naming_a_stored_deep_value_is_bounded() -> None:
    # The metadata applies what it is given (the bound is enforced before a command is
    # proposed), so a value from an older store reaches its error texts as it is.
    state = md.MetadataState()
    state.apply(md.AddVhost("/"))
    deep = nested(5000)
    assert not isinstance(state.apply(md.DeclareQueue("/", "q", True, False, None, {"x-message-ttl": deep}, "n@h"))
                          .result, md.Refusal)
    refusal = state.apply(md.DeclareQueue("/", "q", True, False, None, {"x-message-ttl": 5}, "n@h")).result
    assert isinstance(refusal, md.Refusal) and refusal.code == 406
    assert "inequivalent arg 'x-message-ttl'" in refusal.text and ELIDED in refusal.text
    assert len(refusal.text) < 10_000


def test_nesting_depth_counts_tables_and_arrays() -> None:
    assert nesting_depth("x") == 0
    assert nesting_depth({}) == 1
    assert nesting_depth({"a": [1, {"b": []}], "c": {}}) == 4
    assert nesting_depth(nested(10_000)) == 10_000
