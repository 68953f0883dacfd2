"""Names and arguments that are not UTF-8 (AMQP strings are octets) survive the metadata wire.

The codec decodes such octets as surrogate escapes; a client declaring a queue
named b"q\\xff" must get it, not an internal error, and the name must come back
identical from the log (command wire) and from a snapshot.
"""

from __future__ import annotations

from cluster import metadata as md

ODD = b"q\xff\xfe-\xc3".decode("utf-8", "surrogateescape")


def _state() -> md.MetadataState:
    state = md.MetadataState()
    for cmd in (md.AddVhost("/"), md.AddUser("guest", "h"), md.SetPermissions("/", "guest", ".*", ".*", ".*")):
        state.apply(cmd)
    return state


def test_commands_with_non_utf8_names_round_trip() -> None:
    cmds = [
        md.DeclareQueue("/", ODD, True, False, None, {ODD: ODD, "x-dead-letter-exchange": ODD}, "n@h"),
        md.DeclareExchange("/", ODD, "topic", True, False, False, {"alternate-exchange": ODD}),
        md.Bind("/", ODD, ODD, "queue", ODD, {ODD: [ODD]}, None),
    ]
    for cmd in cmds:
        wire = md._pack(cmd.to_wire())
        assert md.command_from_wire(md._unpack(wire)) == cmd


def test_snapshot_keeps_non_utf8_names() -> None:
    state = _state()
    state.apply(md.DeclareExchange("/", ODD, "direct", True, False, False, {}))
    state.apply(md.DeclareQueue("/", ODD, True, False, None, {"x-custom": ODD}, "n@h"))
    state.apply(md.Bind("/", ODD, ODD, "queue", ODD, {}, None))
    restored = md.MetadataState.restore(state.snapshot())
    assert restored.queue("/", ODD) == state.queue("/", ODD)
    assert restored.exchange("/", ODD) == state.exchange("/", ODD)
    assert restored.snapshot() == state.snapshot()
