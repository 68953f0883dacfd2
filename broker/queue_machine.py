"""`QueueMachine`: a replicated queue's Raft state machine — `QueueState` fed by its group's log.

A mirrored or quorum queue is a Raft group (`cluster/raft`); every replica hosts one
`QueueMachine`, and every change to the queue is an entry of that group's log. An
entry is one proposal of the leader's shell (`broker.replicated_queue`): the commands
it gathered while one task ran, applied in order.

    entry = msgpack [proposer, proposal, [command, ...]]

`proposer` names the shell that proposed it (node name and a random boot token) and
`proposal` its number there, so the proposing shell can match the outcome of each of
its commands (a confirm, a basic.get) when the entry is applied on its node. Commands
are `broker.queue.command_to_wire` forms, except that an enqueue carries its message
inline (`["enq", message, now_ms, deliver_to, ack_required, redelivered]`), and
`["load", state]` replaces the whole state (a queue becoming replicated starts its log
with the state it had).

Apply is deterministic: time arrives in the commands, and a message's id is made from
the entry's index and its place in the entry, so every replica gives the same message
the same id without reading a counter. Effects are returned to the shell of this node,
which acts on them only while it leads the group (`ReplicatedQueue.applied`).

The leader applies its own entries without decoding them: the shell hands the machine
each proposal's commands and the `Message` objects it enqueues (`proposed`), and apply
uses those, giving each message the id and fields a follower decodes (entries with a
`load` or `cfg` command are decoded as any other).

Snapshots are the queue's state (`broker.queue_snapshot`), taken by the driver every
`snapshot_every` entries, so the log is compacted and a new or returning replica
catches up from the snapshot and the log tail.
"""

from __future__ import annotations

from typing import Any, Protocol

import logging

import msgpack

from broker.arguments import QueueSettings
from broker.queue import Command, Enqueue, QueueState, command_from_wire
from broker.queue_snapshot import state_from_bytes, state_to_bytes
from broker.message import Message
from broker.remote_queue import message_from_wire, message_to_wire

log = logging.getLogger("leveret.queue_machine")

# Ids of messages made by apply: index << ID_SHIFT | position in the entry. High enough
# that a node's own counter (which starts at 1 each boot) is far below them.
ID_SHIFT = 20
ID_BASE = 1 << 62


class AppliedListener(Protocol):
    def applied(self, proposer: str, proposal: int, commands: list[Any], results: list[list[Any]]) -> None: ...

    def restored(self) -> None: ...


def encode_entry(proposer: str, proposal: int, commands: list[Any]) -> bytes:
    return msgpack.packb([proposer, proposal, commands], use_bin_type=True)


def enqueue_wire(message: "Message", now_ms: int, deliver_to: str | None, ack_required: bool,
                 redelivered: bool = False) -> list[Any]:
    return ["enq", message_to_wire(message), now_ms, deliver_to, ack_required, redelivered]


def load_wire(state: QueueState) -> list[Any]:
    return ["load", state_to_bytes(state)]


class QueueMachine:
    """One replica's state of a replicated queue (the driver's `StateMachine`)."""

    def __init__(self, name: str, settings: QueueSettings, created_ms: int = 0) -> None:
        self.state = QueueState(name, settings, created_ms)
        self.listener: AppliedListener | None = None
        # A "load" entry was applied: the group holds a queue converted from a plain one.
        self.loaded = False
        # This node's proposals not yet applied, by their entry's bytes: (proposer, proposal,
        # commands, the message each enqueue carries) — see `proposed`.
        self._own: dict[bytes, tuple[str, int, list[Any], list["Message | None"]]] = {}

    def proposed(self, data: bytes, proposer: str, proposal: int, commands: list[Any],
                 messages: list["Message | None"]) -> None:
        """The shell here proposed `data` (`encode_entry(proposer, proposal, commands)`, with
        `messages[i]` the message of `commands[i]` if it is an enqueue): should it be applied
        here, apply uses these instead of decoding it."""
        if not any(wire[0] in _DECODED for wire in commands):
            self._own[data] = (proposer, proposal, commands, messages)

    def forget(self, data: bytes | None = None) -> None:
        """A proposal will not be applied from what the shell kept (lost, or this node no
        longer leads): `data`, or every one."""
        if data is None:
            self._own.clear()
        else:
            self._own.pop(data, None)

    def apply(self, index: int, data: bytes) -> None:
        own = self._own.pop(data, None) if self._own else None
        messages: list["Message | None"] | None = None
        if own is None:
            proposer, proposal, commands = msgpack.unpackb(data, raw=False, strict_map_key=False)
        else:
            proposer, proposal, commands, messages = own
        results: list[list[Any]] = []
        state = self.state
        for position, wire in enumerate(commands):
            tag = wire[0]
            if tag == "load":
                self.state = state = state_from_bytes(wire[1])
                self.loaded = True
                results.append([])
                continue
            cmd: Command
            if tag == "enq":
                message_id = ID_BASE | index << ID_SHIFT | position
                proposed = messages[position] if messages is not None else None
                if proposed is not None:
                    message = _as_applied(proposed, message_id)
                else:
                    message = message_from_wire(wire[1], message_id)
                cmd = Enqueue(message, wire[2], wire[3], wire[4], wire[5])
            else:
                cmd = command_from_wire(wire, _no_message)
            results.append(state.apply(cmd))
        if self.listener is not None:
            try:
                self.listener.applied(proposer, proposal, commands, results)
            except Exception:
                # Called from the Raft driver's loop: the shell's failure to act on an entry
                # (a client's connection, say) must not stop the node's replication.
                log.exception("acting on an applied entry of queue '%s' failed", self.state.name)

    def snapshot(self) -> bytes:
        return msgpack.packb([self.loaded, state_to_bytes(self.state)], use_bin_type=True)

    def restore(self, data: bytes) -> None:
        self._own.clear()
        loaded, state = msgpack.unpackb(data, raw=False)
        self.loaded = bool(loaded)
        self.state = state_from_bytes(state)
        if self.listener is not None:
            self.listener.restored()


# Commands whose decoded form may differ from what the shell built (tuples become lists in
# settings): entries holding one are always decoded, as on the followers.
_DECODED = frozenset({"load", "cfg"})


def _as_applied(m: "Message", message_id: int) -> "Message":
    """The message a follower decodes from `message_to_wire(m)`, with this entry's id: a new
    object (the publisher's may be routed to other queues too, under its own id) sharing
    the body and the decoded properties."""
    body = m.body if type(m.body) is bytes else bytes(m.body)
    return Message(m.exchange, m.routing_key, m.properties, body, bool(m.persistent), int(m.priority),
                   m.expiration_ms, m.raw_properties, message_id)


def _no_message(message_id: int) -> "Message":
    raise ValueError("an enqueue without its message")
