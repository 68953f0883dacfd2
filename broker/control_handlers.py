"""The node side of `leveretctl`: one method per control operation.

Each takes the request's args (a msgpack map) and returns plain msgpack-able
data (dicts, lists, strings, numbers), reading the node through its metadata
view, queue leaders and sessions, and changing it only by proposing metadata
commands (so a change is committed through the metadata log like one made by
a client). Refusals are `ControlError`s carrying the text `rabbitmqctl` prints
and its exit code; both were taken from RabbitMQ 3.10.8, including their
inconsistencies (`User "u" does not exist` from delete_user but `User u does
not exist` from set_permissions; 65 for an unknown vhost in delete_vhost, 69
in set_permissions).

Rows of `list_*` are dicts with every info item the command knows; the CLI
picks the columns the operator asked for. Argument tables travel as
[key, AMQP type, value] triples, the shape rabbitmqctl's JSON shows, so the
CLI can print either `[{"x-max-length",10}]` or the JSON.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

from broker import auth, cluster_clients
from broker.config import DiskFreeLimit, MemoryWatermark
from broker.control_cluster import ClusterControl
from broker.control_mirroring import MirroringControl
from broker.node_view import NodeView, plain
from broker.queue_client import QueueUnavailable
from broker.replica_control import rebalance, sync_queue
from broker.replica_status import queue_rows
from cluster import metadata as md
from cluster.control import (
    EX_DATAERR,
    EX_NOUSER,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    ControlError,
)
from cluster.logtext import PEER_REASON_LIMIT, peer_text
from cluster.nesting import ELIDED, MAX_TABLE_DEPTH, too_deep
from cluster.policy import parse_definition, pcre_error, validate_policy

if TYPE_CHECKING:
    from broker.node import Node

log = logging.getLogger("leveret.control")

APP_NOT_RUNNING = ("this command requires the 'leveret' app to be running on the target node. "
                   "Start it with 'leveretctl start_app'.")

# Operations that work while the app is stopped (they manage the node itself).
_WITHOUT_APP = frozenset({"ping", "status", "environment", "stop", "stop_app", "start_app", "await_startup"})

def listed(rows: list[dict[str, Any]], unanswered: list[str]) -> dict[str, Any]:
    """A cluster-wide listing's answer: its rows, and the members that did not answer in
    time (`cluster_clients.CALL_TIMEOUT`, seconds), which leveretctl reports."""
    return {"rows": rows, "unanswered": unanswered, "timeout": cluster_clients.CALL_TIMEOUT}


def typed_value(value: Any, depth: int = 1) -> tuple[str, Any]:
    """(AMQP type, value) with the value as the CLI renders it: tables as triples, arrays as
    [type, value] pairs, a decimal as [scale, unscaled] (RabbitMQ's {Scale, Value}). A table
    or array deeper than the bound keeps its type and has ELIDED for a value."""
    kind = md.amqp_type(value)
    if kind in ("table", "array") and depth > MAX_TABLE_DEPTH:
        return kind, ELIDED
    if kind == "table":
        return kind, typed_table(value, depth)
    if kind == "array":
        return kind, [list(typed_value(v, depth + 1)) for v in value]
    if kind == "decimal":
        sign, digits, exponent = value.as_tuple()
        unscaled = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        if isinstance(exponent, int) and exponent > 0:
            unscaled, exponent = unscaled * 10 ** exponent, 0
        return kind, [-exponent if isinstance(exponent, int) else 0, unscaled]
    return kind, plain(value)


def typed_table(table: Mapping[str, Any] | None, depth: int = 1) -> list[list[Any]]:
    """A field table (at level `depth`) as [key, AMQP type, value] triples (rabbitmqctl's JSON shape)."""
    return [[key, *typed_value(value, depth + 1)] for key, value in (table or {}).items()]


def _check_regexes(patterns: list[str], user: str, vhost: str, *, topic: bool = False) -> None:
    for pattern in patterns:
        error = pcre_error(pattern)
        if error is not None:
            log.warning("Failed to set %spermissions for '%s' in virtual host '%s': regular expression '%s' "
                        "is invalid", "topic " if topic else "", peer_text(user), peer_text(vhost),
                        peer_text(pattern))
            # RabbitMQ hands set_permissions' patterns to re as charlists ('('), and
            # set_topic_permissions' as binaries ("("); the error term shows which.
            shown = json.dumps(pattern) if topic else f"'{pattern}'"
            raise ControlError(f"{{:invalid_regexp, {shown}, {{'{error[0]}', {error[1]}}}}}", EX_UNAVAILABLE)


_BLANK_PASSWORD = ("user '{}' attempted to log in with a blank password, which is prohibited by the internal "
                   "authN backend. To use TLS/x509 certificate-based authentication, see the "
                   "rabbitmq_auth_mechanism_ssl plugin and configure the client to use the EXTERNAL "
                   "authentication mechanism. Alternatively change the password for the user to be non-blank.")

# The queue types add_vhost --default-queue-type takes (rabbit_queue_type:discover/1).
_QUEUE_TYPES = frozenset({"classic", "quorum", "stream"})


def _no_such_vhost(vhost: str) -> ControlError:
    return ControlError(f"Virtual host '{vhost}' does not exist", EX_DATAERR)


class ControlHandlers:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.view = NodeView(node)
        self._methods: dict[str, Callable[[Mapping[str, Any]], Awaitable[Any]]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")
        }
        cluster = ClusterControl(node)
        self._methods.update(cluster.methods())
        self._methods.update(MirroringControl(node).methods())
        self._without_app = _WITHOUT_APP | cluster.WITHOUT_APP

    async def handle(self, method: str, args: Mapping[str, Any]) -> Any:
        op = self._methods.get(method)
        if op is None:
            raise ControlError(f"Command '{method}' not found.", EX_USAGE)
        if method not in self._without_app and not self.node.app_running:
            raise ControlError(APP_NOT_RUNNING, EX_USAGE)
        try:
            return await op(args)
        except KeyError as exc:
            # A request without an argument its command needs (leveretctl always sends them;
            # another client might not): a usage error, not an internal one.
            raise ControlError(f"Error: missing argument {exc.args[0]!r} for '{method}'", EX_USAGE) from None

    # ------------------------------------------------------------------ helpers

    async def _propose(self, cmd: md.Command, exit_code: int = EX_SOFTWARE) -> Any:
        result = await self.node.propose_metadata(cmd)
        if isinstance(result, md.Refusal):
            # 541: the cluster could not commit it (no majority reachable): unavailable, as
            # rabbitmqctl reports a node it cannot get an answer from.
            raise ControlError(result.text, EX_UNAVAILABLE if result.code == 541 else exit_code)
        return result

    def _vhost(self, args: Mapping[str, Any]) -> str:
        # "" is a vhost name like any other (one that seldom exists), not the default vhost.
        vhost = args.get("vhost")
        return "/" if vhost is None else str(vhost)

    def _require_vhost(self, vhost: str, error: ControlError | None = None) -> None:
        if self.node.metadata.vhost(vhost) is None:
            raise error or _no_such_vhost(vhost)

    # ------------------------------------------------------------------ node

    async def op_ping(self, args: Mapping[str, Any]) -> Any:
        return "pong"

    async def op_status(self, args: Mapping[str, Any]) -> Any:
        return self.view.status()

    async def op_environment(self, args: Mapping[str, Any]) -> Any:
        s = self.node.settings
        env = {}
        for name in type(s).__dataclass_fields__:
            if name == "cookie":
                continue  # never shown, like Erlang's cookie
            if name == "default_pass":
                env[name] = "********"
                continue
            value = getattr(s, name)
            if hasattr(value, "__dataclass_fields__"):
                value = {k: getattr(value, k) for k in type(value).__dataclass_fields__}
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            env[name] = value
        return {"leveret": env}

    async def op_report(self, args: Mapping[str, Any]) -> Any:
        report: dict[str, Any] = {
            "status": await self.op_status(args),
            "connections": (await self.op_list_connections(args))["rows"],
            "channels": (await self.op_list_channels(args))["rows"],
            "vhosts": [],
        }
        for vhost in self.node.metadata.vhosts():
            per = {"vhost": vhost.name}
            for name, op in (("queues", self.op_list_queues), ("exchanges", self.op_list_exchanges),
                             ("bindings", self.op_list_bindings), ("consumers", self.op_list_consumers),
                             ("permissions", self.op_list_permissions), ("policies", self.op_list_policies)):
                rows = await op({"vhost": vhost.name})
                per[name] = rows["rows"] if isinstance(rows, Mapping) else rows
            report["vhosts"].append(per)
        return report

    async def op_stop(self, args: Mapping[str, Any]) -> Any:
        # Answer first, then stop the way SIGTERM does (connections closed with 320 first).
        async def stop_soon() -> None:
            await trio.sleep(0.1)
            log.info("stop requested by %s", peer_text(args.get("by", "leveretctl")))
            os.kill(os.getpid(), signal.SIGTERM)

        trio.lowlevel.spawn_system_task(stop_soon)
        return os.getpid()

    async def op_stop_app(self, args: Mapping[str, Any]) -> Any:
        log.info("stopping the AMQP application on request of leveretctl")
        await self.node.stop_app()
        return None

    async def op_start_app(self, args: Mapping[str, Any]) -> Any:
        log.info("starting the AMQP application on request of leveretctl")
        await self.node.start_app()
        return None

    async def op_await_startup(self, args: Mapping[str, Any]) -> Any:
        timeout = float(args.get("timeout") or 300)
        with trio.move_on_after(timeout):
            await self.node.started.wait()
            while not self.node.app_running:
                await trio.sleep(0.05)
            return None
        raise ControlError(f"Error: operation await_startup on node {self.node.name} timed out. "
                           f"Timeout value used: {int(timeout * 1000)}", EX_TEMPFAIL)

    # ------------------------------------------------------------------ resource limits

    async def op_set_vm_memory_high_watermark(self, args: Mapping[str, Any]) -> Any:
        if "absolute" in args:
            self.node.set_resource_limits(memory=MemoryWatermark(relative=None, absolute=int(args["absolute"])))
        else:
            self.node.set_resource_limits(memory=MemoryWatermark(relative=float(args["fraction"])))
        return None

    async def op_set_disk_free_limit(self, args: Mapping[str, Any]) -> Any:
        if "mem_relative" in args:
            self.node.set_resource_limits(disk=DiskFreeLimit(absolute=None, mem_relative=float(args["mem_relative"])))
        else:
            self.node.set_resource_limits(disk=DiskFreeLimit(absolute=int(args["absolute"])))
        return None

    # ------------------------------------------------------------------ users

    def _user_exists(self, name: str, *, quoted: bool = True) -> md.UserRecord:
        user = self.node.metadata.user(name)
        if user is None:
            raise ControlError(f'User "{name}" does not exist' if quoted else f"User {name} does not exist",
                               EX_NOUSER)
        return user

    async def op_add_user(self, args: Mapping[str, Any]) -> Any:
        name, password = str(args["name"]), str(args["password"])
        if self.node.metadata.user(name) is not None:
            raise ControlError(f'User "{name}" already exists', EX_SOFTWARE)
        await self._propose(md.AddUser(name, auth.hash_password(password) if password else "",
                                       tags=tuple(args.get("tags") or ())))
        return None

    async def op_delete_user(self, args: Mapping[str, Any]) -> Any:
        name = str(args["name"])
        self._user_exists(name)
        await self._propose(md.DeleteUser(name), EX_NOUSER)
        return None

    async def op_change_password(self, args: Mapping[str, Any]) -> Any:
        name = str(args["name"])
        self._user_exists(name)
        await self._propose(md.ChangePassword(name, auth.hash_password(str(args["password"]))), EX_NOUSER)
        return None

    async def op_clear_password(self, args: Mapping[str, Any]) -> Any:
        name = str(args["name"])
        # Unlike delete_user and change_password, clear_password has no text of its own for
        # an unknown user: rabbitmqctl prints the error term, exit 69.
        if self.node.metadata.user(name) is None:
            raise ControlError(f'{{:no_such_user, "{name}"}}', EX_UNAVAILABLE)
        # An empty hash matches no password: the user can no longer log in with one.
        await self._propose(md.ChangePassword(name, ""), EX_NOUSER)
        return None

    async def op_authenticate_user(self, args: Mapping[str, Any]) -> Any:
        name, password = str(args["name"]), str(args["password"])
        user = self.node.metadata.user(name)
        if password == "":
            # rabbit_auth_backend_internal refuses a blank password before looking the user up.
            raise ControlError(f'Error: failed to authenticate user "{name}"\n{_BLANK_PASSWORD.format(name)}',
                               EX_DATAERR)
        if user is None or not auth.check_password(
                user.password_hash, user.hashing_algorithm, password):
            raise ControlError(f'Error: failed to authenticate user "{name}"\nuser \'{name}\' - invalid credentials',
                               EX_DATAERR)
        return {"user": name, "tags": list(auth.user_tags(user))}

    async def op_set_user_tags(self, args: Mapping[str, Any]) -> Any:
        name = str(args["name"])
        self._user_exists(name)
        await self._propose(md.SetUserTags(name, tuple(str(t) for t in args.get("tags") or ())), EX_NOUSER)
        return None

    async def op_list_users(self, args: Mapping[str, Any]) -> Any:
        return [{"user": u.name, "tags": list(auth.user_tags(u))} for u in self.node.metadata.users()]

    # ------------------------------------------------------------------ vhosts

    async def op_add_vhost(self, args: Mapping[str, Any]) -> Any:
        name = str(args["name"])
        queue_type = args.get("default_queue_type")
        if queue_type is not None and queue_type not in _QUEUE_TYPES:
            raise ControlError("invalid_queue_type", EX_UNAVAILABLE)
        await self._propose(md.AddVhost(name, str(args.get("description") or ""),
                                        tuple(args.get("tags") or ()), args.get("default_queue_type")))
        return None

    async def op_delete_vhost(self, args: Mapping[str, Any]) -> Any:
        name = str(args["name"])
        self._require_vhost(name)
        await self._propose(md.DeleteVhost(name), EX_DATAERR)
        return None

    async def op_list_vhosts(self, args: Mapping[str, Any]) -> Any:
        return [{
            "name": v.name,
            "description": v.description,
            "tags": list(v.tags),
            "default_queue_type": v.default_queue_type or "undefined",
            "cluster_state": {self.node.name: "running"},
            "tracing": False,
        } for v in self.node.metadata.vhosts()]

    # ------------------------------------------------------------------ permissions

    def _user_then_vhost(self, user: str, vhost: str) -> None:
        # set_permissions' texts: no quotes, vhost 69, user 67.
        self._user_exists(user, quoted=False)
        self._require_vhost(vhost, ControlError(f"Virtual host {vhost} does not exist", EX_UNAVAILABLE))

    async def op_set_permissions(self, args: Mapping[str, Any]) -> Any:
        vhost, user = self._vhost(args), str(args["user"])
        self._user_then_vhost(user, vhost)
        regexes = [str(args["configure"]), str(args["write"]), str(args["read"])]
        _check_regexes(regexes, user, vhost)
        await self._propose(md.SetPermissions(vhost, user, *regexes), EX_UNAVAILABLE)
        return None

    async def op_clear_permissions(self, args: Mapping[str, Any]) -> Any:
        vhost, user = self._vhost(args), str(args["user"])
        self._user_then_vhost(user, vhost)
        await self._propose(md.ClearPermissions(vhost, user), EX_UNAVAILABLE)
        return None

    async def op_list_permissions(self, args: Mapping[str, Any]) -> Any:
        vhost = self._vhost(args)
        self._require_vhost(vhost)
        return [{"user": p.user, "configure": p.configure, "write": p.write, "read": p.read}
                for p in self.node.metadata.permissions(vhost=vhost)]

    async def op_list_user_permissions(self, args: Mapping[str, Any]) -> Any:
        user = str(args["user"])
        if self.node.metadata.user(user) is None:
            raise ControlError(f'{{:no_such_user, "{user}"}}', EX_UNAVAILABLE)
        return [{"vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read}
                for p in self.node.metadata.permissions(user=user)]

    async def op_set_topic_permissions(self, args: Mapping[str, Any]) -> Any:
        vhost, user = self._vhost(args), str(args["user"])
        self._user_then_vhost(user, vhost)
        regexes = [str(args["write"]), str(args["read"])]
        _check_regexes(regexes, user, vhost, topic=True)
        await self._propose(md.SetTopicPermissions(vhost, user, str(args["exchange"]), *regexes), EX_UNAVAILABLE)
        return None

    async def op_clear_topic_permissions(self, args: Mapping[str, Any]) -> Any:
        vhost, user = self._vhost(args), str(args["user"])
        self._user_then_vhost(user, vhost)
        exchange = args.get("exchange")
        await self._propose(md.ClearTopicPermissions(vhost, user, str(exchange) if exchange else None),
                            EX_UNAVAILABLE)
        return None

    async def op_list_topic_permissions(self, args: Mapping[str, Any]) -> Any:
        vhost = self._vhost(args)
        self._require_vhost(vhost)
        return [{"user": p.user, "exchange": p.exchange, "write": p.write, "read": p.read}
                for p in self.node.metadata.topic_permissions(vhost=vhost)]

    async def op_list_user_topic_permissions(self, args: Mapping[str, Any]) -> Any:
        user = str(args["user"])
        if self.node.metadata.user(user) is None:
            raise ControlError(f'{{:no_such_user, "{user}"}}', EX_UNAVAILABLE)
        return [{"vhost": p.vhost, "exchange": p.exchange, "write": p.write, "read": p.read}
                for p in self.node.metadata.topic_permissions(user=user)]

    # ------------------------------------------------------------------ policies

    async def op_set_policy(self, args: Mapping[str, Any]) -> Any:
        vhost = self._vhost(args)
        parsed = parse_definition(str(args["definition"]))
        if not isinstance(parsed, dict) and not parsed.validation:
            # RabbitMQ's JSON decoder gives one reason for any text that is not JSON.
            raise ControlError("JSON decoding error. Reason: badarg", EX_UNAVAILABLE)
        self._require_vhost(vhost)
        apply_to = str(args.get("apply_to") or "all")
        pattern = str(args["pattern"])
        invalid = validate_policy(pattern, apply_to, json.loads(str(args["definition"])))
        if invalid is not None:
            raise ControlError(invalid.message(), EX_UNAVAILABLE)
        assert isinstance(parsed, dict)
        await self._propose(md.SetPolicy(vhost, str(args["name"]), pattern, apply_to, parsed,
                                         int(args.get("priority") or 0)), EX_UNAVAILABLE)
        return None

    async def op_clear_policy(self, args: Mapping[str, Any]) -> Any:
        vhost = self._vhost(args)
        name = str(args["name"])
        if self.node.metadata.policy(vhost, name) is None:
            raise ControlError("Parameter does not exist", EX_UNAVAILABLE)
        await self._propose(md.ClearPolicy(vhost, name), EX_UNAVAILABLE)
        return None

    async def op_list_policies(self, args: Mapping[str, Any]) -> Any:
        vhost = self._vhost(args)
        self._require_vhost(vhost)
        return [self._policy_row(p) for p in self.node.metadata.policies(vhost)]

    @staticmethod
    def _policy_row(p: md.PolicyRecord) -> dict[str, Any]:
        return {"vhost": p.vhost, "name": p.name, "pattern": p.pattern, "apply-to": p.apply_to,
                "definition": json.dumps(plain(p.definition), sort_keys=True, separators=(",", ":")),
                "priority": p.priority}

    # ------------------------------------------------------------------ inspection

    async def op_list_queues(self, args: Mapping[str, Any]) -> Any:
        # Each queue as its leader sees it, wherever it is led (broker.replica_status).
        rows = await queue_rows(self.view, self.node.clustering.transport, self._vhost(args))
        return [{**row, "arguments": typed_table(row["arguments"])} for row in rows]

    async def op_list_exchanges(self, args: Mapping[str, Any]) -> Any:
        return [{**row, "arguments": typed_table(row["arguments"])}
                for row in self.view.exchange_rows(self._vhost(args))]

    async def op_list_bindings(self, args: Mapping[str, Any]) -> Any:
        vhost = self._vhost(args)
        meta = self.node.metadata
        rows = []
        # The default exchange's implicit bindings come first, as RabbitMQ lists them.
        for q in meta.queues(vhost):
            rows.append({"source_name": "", "source_kind": "exchange", "destination_name": q.name,
                         "destination_kind": "queue", "routing_key": q.name, "arguments": []})
        # RabbitMQ's route table is ordered by (source, routing key, destination kind and name),
        # and a binding's argument table is stored sorted by key.
        explicit = sorted(meta.bindings(vhost), key=lambda b: (b.source, b.routing_key, b.destination_kind,
                                                               b.destination))
        for b in explicit:
            rows.append({"source_name": b.source, "source_kind": "exchange", "destination_name": b.destination,
                         "destination_kind": b.destination_kind, "routing_key": b.routing_key,
                         "arguments": typed_table(dict(sorted((b.arguments or {}).items())))})
        return rows

    # Connections, channels and consumers are the cluster's, as rabbitmqctl lists them: every
    # member answers `node.clients` (broker.cluster_clients). A member that does not answer is
    # left out and named in `unanswered`, which leveretctl reports on stderr as rabbitmqctl
    # reports a node whose emitter timed out; one that is down is not running and not asked.

    async def op_list_connections(self, args: Mapping[str, Any]) -> Any:
        clients = await cluster_clients.gather(self.node, self.node.clustering.transport)
        return listed([{**row, "client_properties": typed_table(row["client_properties"])}
                       for row in clients.connections], clients.unanswered)

    async def op_list_channels(self, args: Mapping[str, Any]) -> Any:
        clients = await cluster_clients.gather(self.node, self.node.clustering.transport)
        return listed(clients.channels, clients.unanswered)

    async def op_list_consumers(self, args: Mapping[str, Any]) -> Any:
        vhost = self._vhost(args)
        clients = await cluster_clients.gather(self.node, self.node.clustering.transport)
        # rabbitmqctl asks only the nodes of the vhost's queues for their consumers.
        leaders = {self.view.queue_leader_node(q) for q in self.node.metadata.queues(vhost)}
        return listed([{**row, "arguments": typed_table(row["arguments"])}
                       for row in clients.consumers if row["vhost"] == vhost],
                      [n for n in clients.unanswered if n in leaders])

    # ------------------------------------------------------------------ operations

    async def op_purge_queue(self, args: Mapping[str, Any]) -> Any:
        vhost, name = self._vhost(args), str(args["name"])
        queue = self.node.queue(vhost, name)
        if self.node.metadata.queue(vhost, name) is None or queue is None:
            raise ControlError("not_found", EX_UNAVAILABLE)
        purged = await queue.purge(self.node.now_ms())
        if isinstance(purged, QueueUnavailable):
            raise ControlError(purged.text, EX_UNAVAILABLE)
        return purged

    async def op_delete_queue(self, args: Mapping[str, Any]) -> Any:
        vhost, name = self._vhost(args), str(args["name"])
        q = self.node.metadata.queue(vhost, name)
        if q is None:
            raise ControlError("Queue not found", EX_USAGE)
        queue = self.node.queue(vhost, name)
        counts = await queue.counts(self.node.now_ms(), touch=False) if queue is not None else None
        if isinstance(counts, QueueUnavailable):
            raise ControlError(counts.text, EX_UNAVAILABLE)
        ready = counts.messages if counts is not None else 0
        # RabbitMQ's emptiness is its backing queue's length: ready messages only, so a queue
        # whose messages are all delivered and unacknowledged is empty.
        if args.get("if_empty") and ready:
            raise ControlError("Queue is not empty", EX_USAGE)
        if args.get("if_unused") and counts is not None and counts.consumers:
            raise ControlError("Queue is in use", EX_USAGE)
        await self._propose(md.DeleteQueue(vhost, name, None))
        return ready

    async def op_sync_queue(self, args: Mapping[str, Any]) -> Any:
        return await sync_queue(self.node, self._vhost(args), str(args["name"]), cancel=False)

    async def op_cancel_sync_queue(self, args: Mapping[str, Any]) -> Any:
        return await sync_queue(self.node, self._vhost(args), str(args["name"]), cancel=True)

    async def op_rebalance_queues(self, args: Mapping[str, Any]) -> Any:
        summary = await rebalance(self.node, str(args.get("type") or "all"), str(args.get("vhost_pattern") or ".*"),
                                  str(args.get("queue_pattern") or ".*"))
        return [{"node": s.node, "quorum": s.quorum, "classic": s.classic} for s in summary]

    async def op_close_connection(self, args: Mapping[str, Any]) -> Any:
        ident, reason = str(args["connection"]), str(args.get("reason") or "")
        session = self.view.find_connection(ident)
        if session is None:
            if not re.fullmatch(r"<[^>]+>", ident):
                # rabbitmqctl 3.10.8 prints "Error:" twice here.
                raise ControlError(f'Error:\n{{:invalid_pid_syntax, "{ident}"}}', EX_UNAVAILABLE)
            # A well-formed pid that is no connection (any more): RabbitMQ logs it and succeeds.
            log.warning("Asked to close connection %s (reason: '%s') but it is not an active connection. "
                        "Was it already closed?", peer_text(ident), peer_text(reason, PEER_REASON_LIMIT))
            return None
        log.info("closing connection %s on request of leveretctl: %s", session.id,
                 peer_text(reason, PEER_REASON_LIMIT))
        session.force_close(320, f"CONNECTION_FORCED - {reason}")
        return None

    async def op_close_all_connections(self, args: Mapping[str, Any]) -> Any:
        reason = str(args.get("reason") or "")
        vhost = args.get("vhost")
        limit = args.get("limit")
        closed = 0
        for s in self.view.open_sessions():
            if vhost is not None and s.vhost != vhost:
                continue
            if limit is not None and closed >= int(limit):
                break
            s.force_close(320, f"CONNECTION_FORCED - {reason}")
            closed += 1
        return closed

    # ------------------------------------------------------------------ definitions

    async def op_export_definitions(self, args: Mapping[str, Any]) -> Any:
        return self.view.definitions()

    async def op_import_definitions(self, args: Mapping[str, Any]) -> Any:
        defs = args.get("definitions")
        if not isinstance(defs, Mapping):
            raise ControlError("Failed to import definitions: not a JSON object", EX_DATAERR)
        try:
            commands = import_commands(defs, self.node.name, self.node.metadata)
        except ValueError as exc:
            raise ControlError(f"Failed to import definitions: {exc}", EX_DATAERR) from None
        counts: dict[str, int] = {}
        for kind, cmd in commands:
            result = await self.node.propose_metadata(cmd)
            if isinstance(result, md.Refusal):
                raise ControlError(f"Failed to import definitions: {kind or 'users'}: {result.text}", EX_DATAERR)
            if kind:
                counts[kind] = counts.get(kind, 0) + 1
        return counts


# --------------------------------------------------------------------------- definitions import


def _tags(value: Any) -> tuple[str, ...]:
    # RabbitMQ < 3.10 exported tags as "a,b"; an empty vhost tag list is exported as "".
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(",") if t.strip())
    return tuple(str(t) for t in value or ())


def _need(item: Mapping[str, Any], kind: str, *keys: str) -> None:
    for key in keys:
        if key not in item:
            raise ValueError(f"{kind} {json.dumps(plain(dict(item)))[:200]} has no '{key}'")


def _arguments(item: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """An imported item's arguments, held to the bound the AMQP codec holds a declare to."""
    arguments = dict(item.get("arguments") or {})
    if too_deep(arguments):
        raise ValueError(f"{kind} '{item.get('name', item.get('destination'))}' in vhost '{item.get('vhost')}': "
                         f"arguments nested too deeply (more than {MAX_TABLE_DEPTH} levels)")
    return arguments


def import_commands(defs: Mapping[str, Any], node_name: str,
                    meta: md.MetadataState) -> list[tuple[str, md.Command]]:
    """The metadata commands that import a RabbitMQ definitions document, in RabbitMQ's
    order (rabbit_definitions: users, vhosts, permissions, topic permissions, policies,
    queues, exchanges, bindings). Existing users are updated; the rest is idempotent.
    Raises ValueError for a malformed document."""
    out: list[tuple[str, md.Command]] = []
    for u in defs.get("users") or []:
        _need(u, "user", "name")
        name = str(u["name"])
        if "password_hash" in u:
            password_hash = str(u["password_hash"])
            algorithm = str(u.get("hashing_algorithm") or "rabbit_password_hashing_md5")
        else:
            password_hash = auth.hash_password(str(u.get("password") or ""))
            algorithm = "rabbit_password_hashing_sha256"
        if not auth.is_known_hashing_algorithm(algorithm):
            raise ValueError(f"user '{name}' has unknown hashing algorithm '{algorithm}'")
        if meta.user(name) is None:
            out.append(("users", md.AddUser(name, password_hash, algorithm, _tags(u.get("tags")))))
        else:
            out.append(("users", md.ChangePassword(name, password_hash, algorithm)))
            out.append(("", md.SetUserTags(name, _tags(u.get("tags")))))  # same user: counted once
    for v in defs.get("vhosts") or []:
        _need(v, "vhost", "name")
        metadata = v.get("metadata") or {}
        out.append(("vhosts", md.AddVhost(str(v["name"]), str(metadata.get("description") or v.get("description") or ""),
                                          _tags(metadata.get("tags", v.get("tags"))),
                                          metadata.get("default_queue_type"))))
    for p in defs.get("permissions") or []:
        _need(p, "permission", "user", "vhost", "configure", "write", "read")
        for pattern in (p["configure"], p["write"], p["read"]):
            if pcre_error(str(pattern)):
                raise ValueError(f"permission regex '{pattern}' is invalid")
        out.append(("permissions", md.SetPermissions(str(p["vhost"]), str(p["user"]), str(p["configure"]),
                                                     str(p["write"]), str(p["read"]))))
    for p in defs.get("topic_permissions") or []:
        _need(p, "topic permission", "user", "vhost", "exchange", "write", "read")
        out.append(("topic_permissions", md.SetTopicPermissions(str(p["vhost"]), str(p["user"]), str(p["exchange"]),
                                                                str(p["write"]), str(p["read"]))))
    for p in defs.get("policies") or []:
        _need(p, "policy", "vhost", "name", "pattern", "definition")
        apply_to = str(p.get("apply-to") or "all")
        invalid = validate_policy(str(p["pattern"]), apply_to, p["definition"])
        if invalid is not None:
            raise ValueError(f"policy '{p['name']}' in vhost '{p['vhost']}': {invalid.text}")
        out.append(("policies", md.SetPolicy(str(p["vhost"]), str(p["name"]), str(p["pattern"]), apply_to,
                                             dict(p["definition"]), int(p.get("priority") or 0))))
    for q in defs.get("queues") or []:
        _need(q, "queue", "name", "vhost")
        arguments = _arguments(q, "queue")
        queue_type = str(q.get("type") or arguments.get("x-queue-type") or "classic")
        out.append(("queues", md.DeclareQueue(str(q["vhost"]), str(q["name"]), bool(q.get("durable", True)),
                                              bool(q.get("auto_delete", False)), None, arguments, node_name,
                                              queue_type)))
    for x in defs.get("exchanges") or []:
        _need(x, "exchange", "name", "vhost", "type")
        name = str(x["name"])
        if not name or name.startswith("amq."):
            continue  # every vhost has these already
        out.append(("exchanges", md.DeclareExchange(str(x["vhost"]), name, str(x["type"]),
                                                    bool(x.get("durable", True)), bool(x.get("auto_delete", False)),
                                                    bool(x.get("internal", False)), _arguments(x, "exchange"))))
    for b in defs.get("bindings") or []:
        _need(b, "binding", "source", "vhost", "destination", "destination_type")
        out.append(("bindings", md.Bind(str(b["vhost"]), str(b["source"]), str(b["destination"]),
                                        str(b["destination_type"]), str(b.get("routing_key") or ""),
                                        _arguments(b, "binding"))))
    return out
