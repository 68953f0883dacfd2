"""The `leveretctl` commands: arguments, the lines they print, and the request each sends.

Every banner ("Adding user \"u\" ...") and column list was copied from
rabbitmqctl 3.10.8; where rabbitmqctl is inconsistent (list_bindings has no
space before "...", list_user_topic_permissions prints no header row) Leveret
is too, so scripts written against rabbitmqctl keep parsing.
"""

from __future__ import annotations

import decimal
import getpass
import json
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker.config import parse_size
from cli.ctl import Context, Exit
from cli.ctl_format import box_lines, csv_lines, json_rows, json_value, table_lines
from cluster.control import EX_DATAERR, EX_SOFTWARE, EX_TEMPFAIL, EX_USAGE
from cluster.nesting import ELIDED, MAX_TABLE_DEPTH, is_container


@dataclass(frozen=True)
class CommandSpec:
    name: str
    usage: str
    summary: str
    run: Callable[[Context, list[str]], None]
    args: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    rest: bool = False  # takes any number of further arguments (info items, tags)
    options: Mapping[str, str] = field(default_factory=dict)  # "--priority": "int" | "str" | "flag"


COMMANDS: dict[str, CommandSpec] = {}


def command(usage: str, summary: str, *, args: Sequence[str] = (), optional: Sequence[str] = (),
            rest: bool = False, options: Mapping[str, str] | None = None
            ) -> Callable[[Callable[[Context, list[str]], None]], Callable[[Context, list[str]], None]]:
    def register(fn: Callable[[Context, list[str]], None]) -> Callable[[Context, list[str]], None]:
        name = fn.__name__.removeprefix("cmd_")
        COMMANDS[name] = CommandSpec(name, f"{name} {usage}".rstrip(), summary, fn, tuple(args),
                                     tuple(optional), rest, dict(options or {}))
        return fn
    return register


# --------------------------------------------------------------------------- listing


def _items(ctx: Context, given: list[str], allowed: Sequence[str], default: Sequence[str], *,
           fixed_order: bool = False) -> list[str]:
    """The columns asked for. `fixed_order`: rabbitmqctl's list_consumers prints the ones asked
    for in its own order (that of `allowed`), not in the order given."""
    if not given:
        return list(default)
    # rabbitmqctl accepts "name,messages" as well as "name messages".
    items = [i for arg in given for i in arg.split(",") if i]
    # rabbitmqctl names the unknown keys sorted, whatever order they were given in.
    unknown = sorted({i for i in items if i not in allowed})
    if unknown:
        ctx.usage_error(f"Info key(s) {','.join(unknown)} are not supported")
    if fixed_order:
        return [i for i in allowed if i in items]
    # A column asked for twice is shown once, where it was first asked for.
    return list(dict.fromkeys(items))


def _show_rows(ctx: Context, rows: list[dict[str, Any]], columns: Sequence[str], *, headers: bool = True,
               streamed: bool = False) -> None:
    """Rows as the chosen formatter prints them. `streamed`: rabbitmqctl streams this
    command's rows (list_queues, list_exchanges, ...); the others (list_permissions,
    list_policies, ...) print an empty line, not nothing, when there are no rows."""
    opts = ctx.options
    if opts.formatter == "json":
        ctx.out(json_rows(rows, columns, streamed=streamed))
        return
    if opts.formatter == "csv":
        if not rows and not streamed:
            # What rabbitmqctl 3.10.8's CSV formatter prints for no rows: "\r\n\r\n\n".
            ctx.out("\r\n\r\n")
        for line in csv_lines(rows, columns):
            ctx.out(line)
        return
    if not rows and not streamed:
        ctx.out("")
    for line in table_lines(rows, columns, headers and opts.headers and not opts.silent):
        ctx.out(line)


def _done(ctx: Context) -> None:
    """What rabbitmqctl's JSON formatter prints for a command that changed something
    and has nothing else to say (the table formatter prints nothing)."""
    if ctx.options.formatter == "json":
        ctx.out(json_value({"node": ctx.options.node, "result": "ok"}))


def _message(ctx: Context, text: str) -> None:
    """A command's one-line answer ("Success", "Ping succeeded"): JSON wraps it."""
    ctx.out(json_value({"message": text}) if ctx.options.formatter == "json" else text)


_QUOTED_USER = re.compile(r'User "(.*)" (does not exist|already exists)', re.S)


def user_json_error(text: str) -> str | None:
    """The JSON formatter's message for add_user, delete_user, change_password and
    set_user_tags refusals: the user unquoted, and "does not exists" (sic, rabbitmqctl 3.10.8)."""
    m = _QUOTED_USER.fullmatch(text)
    if m is None:
        return None
    return f"User {m[1]} {'does not exists' if m[2] == 'does not exist' else m[2]}"


_UNQUOTED_ABSENT = re.compile(r"(User|Virtual host) .* does not exist", re.S)


def permission_json_error(text: str) -> str | None:
    """The JSON formatter's message for (set|clear)_(topic_)permissions refusals: the same text."""
    return text if _UNQUOTED_ABSENT.fullmatch(text) else None


def _listing(name: str, banner: Callable[[Context], str], method: str, allowed: Sequence[str],
             default: Sequence[str], summary: str, *, vhost: bool = True, timeout_line: bool = False,
             options: Mapping[str, str] | None = None, usage: str | None = None, fixed_order: bool = False,
             filter_rows: Callable[[Context, list[dict[str, Any]]], list[dict[str, Any]]] | None = None) -> None:
    def run(ctx: Context, given: list[str]) -> None:
        columns = _items(ctx, given, allowed, default, fixed_order=fixed_order)
        if timeout_line:
            ctx.info(f"Timeout: {ctx.options.timeout if ctx.options.timeout is not None else 60.0} seconds ...")
        ctx.info(banner(ctx))
        rows = ctx.call(method, {"vhost": ctx.options.vhost} if vhost else {})
        if isinstance(rows, dict):
            rows = _cluster_rows(ctx, rows)
        if filter_rows is not None:
            rows = filter_rows(ctx, rows)
        _show_rows(ctx, rows, columns, streamed=True)

    if usage is None:
        usage = ("[--vhost <vhost>] " if vhost else "") + "[--no-table-headers] [<column> ...] [--timeout <timeout>]"
    COMMANDS[name] = CommandSpec(name, f"{name} {usage}", summary + f"\n\nColumns: {', '.join(sorted(allowed))}",
                                 run, rest=True, options=dict(options or {}))


def _cluster_rows(ctx: Context, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """A cluster-wide listing's rows (connections, channels, consumers). A member that did not
    answer in time is left out with the line rabbitmqctl 3.10.8 prints on stderr when a
    node's emitter times out (`{:badrpc, {:timeout, 15.0}}` for --timeout 15); the listing
    still exits 0, as rabbitmqctl's does."""
    timeout = float(answer.get("timeout") or 0.0)
    for _member in answer.get("unanswered") or ():
        ctx.error(f"{{:badrpc, {{:timeout, {timeout}}}}}")
    return list(answer.get("rows") or [])


# Exactly rabbitmqctl 3.10.8's list_queues keys: a script asking for another gets its usage error.
QUEUE_ITEMS = ("name", "durable", "auto_delete", "exclusive", "arguments", "policy", "pid", "owner_pid",
               "exclusive_consumer_pid", "exclusive_consumer_tag", "messages_ready", "messages_unacknowledged",
               "messages", "messages_ready_ram", "messages_unacknowledged_ram", "messages_ram", "messages_persistent",
               "message_bytes", "message_bytes_ready", "message_bytes_unacknowledged", "message_bytes_ram",
               "message_bytes_persistent", "head_message_timestamp", "disk_reads", "disk_writes", "consumers",
               "consumer_utilisation", "consumer_capacity", "memory", "slave_pids", "synchronised_slave_pids",
               "state", "type", "leader", "members", "online")


def _queue_placement(ctx: Context, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """--online / --offline / --local: rabbitmqctl's filters on where a queue lives. A queue
    whose leader is not running is "down", as RabbitMQ shows a queue on an unreachable node."""
    o = ctx.options.command_options
    if o.get("online"):
        rows = [r for r in rows if r.get("state") != "down"]
    if o.get("offline"):
        rows = [r for r in rows if r.get("state") == "down"]
    if o.get("local"):
        rows = [r for r in rows if r.get("home_node") == ctx.options.node]
    return rows


_listing("list_queues", lambda c: f"Listing queues for vhost {c.options.vhost} ...", "list_queues",
         QUEUE_ITEMS, ("name", "messages"), "Lists queues and their properties", timeout_line=True,
         options={"--online": "flag", "--offline": "flag", "--local": "flag"},
         usage="[--vhost <vhost>] [--online] [--offline] [--local] [--no-table-headers] [<column>, ...] "
               "[--timeout <timeout>]", filter_rows=_queue_placement)
_listing("list_exchanges", lambda c: f"Listing exchanges for vhost {c.options.vhost} ...", "list_exchanges",
         ("name", "type", "durable", "auto_delete", "internal", "arguments", "policy"), ("name", "type"),
         "Lists exchanges")
BINDING_ITEMS = ("source_name", "source_kind", "destination_name", "destination_kind", "routing_key", "arguments")
_listing("list_bindings", lambda c: f"Listing bindings for vhost {c.options.vhost}...", "list_bindings",
         BINDING_ITEMS, BINDING_ITEMS, "Lists all bindings on a vhost")
_listing("list_connections", lambda c: "Listing connections ...", "list_connections",
         # rabbitmqctl's keys but recv_cnt, recv_oct, send_cnt and send_oct: Leveret does not count
         # a connection's frames and octets. The TLS ones are empty: Leveret has no TLS listener.
         ("pid", "name", "port", "host", "peer_port", "peer_host", "ssl", "ssl_protocol", "ssl_key_exchange",
          "ssl_cipher", "ssl_hash", "peer_cert_subject", "peer_cert_issuer", "peer_cert_validity", "protocol",
          "auth_mechanism", "user", "vhost", "timeout", "frame_max", "channel_max", "client_properties",
          "connected_at", "state", "channels", "send_pend"),
         ("user", "peer_host", "peer_port", "state"), "Lists AMQP 0.9.1 connections for the node", vhost=False)
_listing("list_channels", lambda c: "Listing channels ...", "list_channels",
         ("pid", "connection", "name", "number", "user", "vhost", "transactional", "confirm", "consumer_count",
          "messages_unacknowledged", "messages_unconfirmed", "messages_uncommitted", "acks_uncommitted",
          "prefetch_count", "global_prefetch_count"),
         ("pid", "user", "consumer_count", "messages_unacknowledged"), "Lists all channels in the node",
         vhost=False, usage="[--no-table-headers] [<column> ...]")
CONSUMER_ITEMS = ("queue_name", "channel_pid", "consumer_tag", "ack_required", "prefetch_count", "active",
                  "activity_status", "arguments")
_listing("list_consumers", lambda c: f"Listing consumers in vhost {c.options.vhost} ...", "list_consumers",
         CONSUMER_ITEMS, ("queue_name", "channel_pid", "consumer_tag", "ack_required", "prefetch_count", "active",
                          "arguments"), "Lists all consumers for a vhost", fixed_order=True)
_listing("list_vhosts", lambda c: "Listing vhosts ...", "list_vhosts",
         ("name", "description", "tags", "default_queue_type", "cluster_state", "tracing"), ("name",),
         "Lists virtual hosts", vhost=False)


# --------------------------------------------------------------------------- node


@command("[--timeout <timeout>]", "Checks that the node OS process is up and CLI tools can authenticate with it")
def cmd_ping(ctx: Context, args: list[str]) -> None:
    timeout = ctx.options.timeout if ctx.options.timeout is not None else 60.0
    ctx.info(f"Will ping {ctx.options.node}. This only checks if the OS process is running and the CLI tool can "
             f"authenticate with it. Timeout: {int(timeout * 1000)} ms.")
    ctx.unreachable = f"Failed to connect and authenticate to {ctx.options.node} in {int(timeout * 1000)} ms"
    ctx.call("ping", timeout=timeout)
    _message(ctx, "Ping succeeded")


# status --unit: the byte multiples rabbitmqctl 3.10.8 takes (any case; printed as given).
_UNITS = {"bytes": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4}


def erlang_float(x: float) -> str:
    """A float as Erlang/Elixir print it: the shortest digits that read back, in decimal or
    scientific notation, whichever is shorter (decimal on a tie): 50.0, 0.0001, 5.0e4."""
    if x == 0:
        return "0.0"
    sign = "-" if x < 0 else ""
    digits_tuple, exponent = decimal.Decimal(repr(abs(x))).normalize().as_tuple()[1:]
    digits = "".join(map(str, digits_tuple))
    assert isinstance(exponent, int)
    point = len(digits) + exponent  # where the decimal point falls in the digits
    scientific = f"{digits[0]}.{digits[1:] or '0'}e{point - 1}"
    if point <= 0:
        plain = "0." + "0" * -point + digits
    elif point >= len(digits):
        plain = digits + "0" * (point - len(digits)) + ".0"
    else:
        plain = digits[:point] + "." + digits[point:]
    return sign + (plain if len(plain) <= len(scientific) else scientific)


def _amount(n: int | None, unit: str) -> str:
    if n is None:
        return "unknown"
    if unit.lower() == "bytes":
        return f"{n} {unit}"
    return f"{erlang_float(round(n / _UNITS[unit.lower()], 4))} {unit}"


def _interface(host: str) -> str:
    # RabbitMQ writes an IPv6 listener address in brackets: [::].
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _listener(listener: Mapping[str, Any]) -> dict[str, Any]:
    return {"interface": _interface(str(listener["interface"])), "node": listener["node"],
            "port": listener["port"], "protocol": listener["protocol"], "purpose": listener["purpose"]}


def _alarm_line(alarm: str, node: str) -> str:
    return f"{_ALARM_NAMES.get(alarm, alarm)} alarm on node {node}"


_ALARM_NAMES = {"disk": "Free disk space", "memory": "Memory"}


def _status_lines(s: Mapping[str, Any], unit: str = "gb") -> list[str]:
    """rabbitmqctl status's sections in its order, with what Leveret has instead of the
    Erlang ones (runtime, processes, plugins, Raft directory, log files)."""
    wm = s["vm_memory_high_watermark"]
    watermark = (f"{wm['relative']} of available memory" if "relative" in wm
                 else _amount(wm["absolute"], unit))
    fd_limit = s.get("file_descriptor_limit")
    lines = [
        "Runtime", "",
        f"OS PID: {s['pid']}",
        f"OS: {s['os']}",
        f"Uptime (seconds): {s['uptime']}",
        "Is under maintenance?: false",
        f"Leveret version: {s['product_version']}",
        f"Node name: {s['node_name']}",
        f"Runtime: {s['runtime']}",
        f"Application running: {'true' if s['app_running'] else 'false'}",
        "", "Data directory", "",
        f"Node data directory: {s['data_directory']}",
        # An empty section when there is no config file, as rabbitmqctl prints it.
        "", "Config files", "",
        *[f" * {f}" for f in s["config_files"]],
        "", "Alarms", "",
        *([_alarm_line(a, s["node_name"]) for a in s["alarms"]] or ["(none)"]),
        "", "Memory", "",
        f"Total memory used: {_amount(s['memory_used'], unit)}",
        f"Calculation strategy: {s['memory_calculation_strategy']}",
        f"Memory high watermark setting: {watermark}, computed to: {_amount(s.get('vm_memory_limit'), unit)}",
        "", "File Descriptors", "",
        f"Total: {s['file_descriptors']}, limit: {fd_limit if fd_limit is not None else 'unknown'}",
        "", "Free Disk Space", "",
        f"Low free disk space watermark: {_amount(s['disk_free_limit'], unit)}",
        f"Free disk space: {_amount(s['disk_free'], unit)}",
        "", "Totals", "",
        f"Connection count: {s['connection_count']}",
        f"Queue count: {s['queue_count']}",
        f"Virtual host count: {s['virtual_host_count']}",
        "", "Listeners", "",
    ]
    for listener in map(_listener, s["listeners"]):
        lines.append(f"Interface: {listener['interface']}, port: {listener['port']}, "
                     f"protocol: {listener['protocol']}, purpose: {listener['purpose']}")
    return lines


def status_json(s: Mapping[str, Any]) -> dict[str, Any]:
    """status --formatter json: rabbitmqctl's keys for what Leveret has (alarms as maps,
    listeners with [::]), then Leveret's own (node_name, runtime, app_running)."""
    wm = s["vm_memory_high_watermark"]
    return {
        "alarms": [{"node": s["node_name"], "resource": a, "type": "resource_limit"} for a in s["alarms"]],
        "config_files": list(s["config_files"]),
        "data_directory": s["data_directory"],
        "disk_free": s["disk_free"],
        "disk_free_limit": s["disk_free_limit"],
        "file_descriptors": {"total_limit": s.get("file_descriptor_limit"), "total_used": s["file_descriptors"]},
        "is_under_maintenance": False,
        "listeners": [_listener(x) for x in s["listeners"]],
        "memory": {"total": {s["memory_calculation_strategy"]: s["memory_used"]}},
        "os": s["os"],
        "pid": s["pid"],
        "product_name": s.get("product_name", "Leveret"),
        "product_version": s["product_version"],
        "totals": {"connection_count": s["connection_count"], "queue_count": s["queue_count"],
                   "virtual_host_count": s["virtual_host_count"]},
        "uptime": s["uptime"],
        "vm_memory_calculation_strategy": s["memory_calculation_strategy"],
        "vm_memory_high_watermark_limit": s.get("vm_memory_limit"),
        "vm_memory_high_watermark_setting": dict(wm),
        "node_name": s["node_name"],
        "runtime": s["runtime"],
        "app_running": s["app_running"],
    }


@command("[--unit <unit>] [--timeout <timeout>]", "Displays status of a node", options={"--unit": "str"})
def cmd_status(ctx: Context, args: list[str]) -> None:
    unit = str(ctx.options.command_options.get("unit", "gb"))
    if unit.lower() not in _UNITS:
        ctx.usage_error(f'"unit \'{unit}\' is not supported. Please use one of: bytes, mb, gb"')
    ctx.info(f"Status of node {ctx.options.node} ...")
    status = ctx.call("status")
    if ctx.options.formatter == "json":
        ctx.out(json_value(status_json(status)))
        return
    ctx.out("\n".join(_status_lines(status, unit)))


@command("", "Displays CLI tools version")
def cmd_version(ctx: Context, args: list[str]) -> None:
    # The CLI's own version, without asking any node (rabbitmqctl's JSON names its default node).
    from broker import __version__

    if ctx.options.formatter == "json":
        ctx.out(json_value({"node": ctx.options.node, "result": "ok", "value": {"version": __version__}}))
    else:
        ctx.out(__version__)


# --------------------------------------------------------------------------- cluster


@command("[--timeout <timeout>]", "Displays all the nodes in the cluster grouped by node type, together with the "
         "currently running nodes")
def cmd_cluster_status(ctx: Context, args: list[str]) -> None:
    """rabbitmqctl 3.10's cluster_status: every member is a disk node; running nodes are
    those the target node can reach (itself included), and the members it cannot reach
    are named under network partitions; versions, listeners, alarms and maintenance
    status of the running nodes."""
    ctx.info(f"Cluster status of node {ctx.options.node} ...")
    s = ctx.call("cluster_status")
    running = list(s["running_nodes"])
    nodes: Mapping[str, Any] = s["nodes"]
    listeners = {n: [_listener(x) for x in nodes[n]["listeners"]] for n in running if n in nodes}
    versions = {n: {"rabbitmq_name": nodes[n].get("product_name", "Leveret"),
                    "rabbitmq_version": nodes[n]["product_version"],
                    "python_version": nodes[n].get("python_version", "")} for n in running if n in nodes}
    alarms = [(n, a) for n in running if n in nodes for a in nodes[n]["alarms"]]
    partitions: Mapping[str, list[str]] = s["partitions"]
    if ctx.options.formatter == "json":
        ctx.out(json_value({
            "alarms": [{"node": n, "resource": a, "type": "resource_limit"} for n, a in alarms],
            "cluster_name": s["cluster_name"], "disk_nodes": list(s["disk_nodes"]), "feature_flags": [],
            "listeners": listeners, "maintenance_status": {n: "not under maintenance" for n in versions},
            "partitions": partitions, "ram_nodes": [], "running_nodes": running, "versions": versions}))
        return
    lines = [
        "Basics", "", f"Cluster name: {s['cluster_name']}",
        "", "Disk Nodes", "", *sorted(s["disk_nodes"]),
        "", "Running Nodes", "", *sorted(running),
        "", "Versions", "",
        *[f"{n}: {v['rabbitmq_name']} {v['rabbitmq_version']} on Python {v['python_version']}"
          for n, v in versions.items()],
        "", "Maintenance status", "", *[f"Node: {n}, status: not under maintenance" for n in versions],
        "", "Alarms", "", *([_alarm_line(a, n) for n, a in alarms] or ["(none)"]),
        "", "Network Partitions", "",
        *([f"Node {n} cannot communicate with {', '.join(peers)}" for n, peers in partitions.items()]
          or ["(none)"]),
        "", "Listeners", "",
        *[f"Node: {n}, interface: {x['interface']}, port: {x['port']}, protocol: {x['protocol']}, "
          f"purpose: {x['purpose']}" for n, xs in listeners.items() for x in xs],
        "", "Feature flags", "", "(none)",
    ]
    ctx.out("\n".join(lines))


@command("[--disc|--ram] <existing_cluster_member>",
         "Instructs the node to become a member of the cluster that the specified node is in",
         args=("existing_cluster_member",), options={"--disc": "flag", "--ram": "flag"})
def cmd_join_cluster(ctx: Context, args: list[str]) -> None:
    target = args[0]
    ctx.info(f"Clustering node {ctx.options.node} with {target}")
    if ctx.options.command_options.get("ram"):
        # Accepted for rabbitmqctl's scripts; a RAM node would lose what a Raft voter promised.
        ctx.info("Every Leveret node is a disc node: --ram is accepted and ignored")
    result = ctx.call("join_cluster", {"target": _full_node_name(target)})
    if result == "already_member":
        _message(ctx, "The node is already a member of this cluster")
    else:
        _done(ctx)


@command("", "Instructs a Leveret node to leave the cluster and return to its virgin state")
def cmd_reset(ctx: Context, args: list[str]) -> None:
    ctx.info(f"Resetting node {ctx.options.node} ...")
    ctx.call("reset")
    _done(ctx)


@command("", "Forcefully returns a Leveret node to its virgin state, without telling the other members")
def cmd_force_reset(ctx: Context, args: list[str]) -> None:
    ctx.info(f"Forcefully resetting node {ctx.options.node} ...")
    ctx.call("reset", {"force": True})
    _done(ctx)


@command("[--offline] <existing_cluster_member_node>", "Removes a node from the cluster",
         args=("existing_cluster_member_node",), options={"--offline": "flag"})
def cmd_forget_cluster_node(ctx: Context, args: list[str]) -> None:
    node = _full_node_name(args[0])
    ctx.info(f"Removing node {node} from the cluster")
    ctx.call("forget_cluster_node", {"node": node, "offline": bool(ctx.options.command_options.get("offline"))})
    _done(ctx)


@command("<disc|ram>", "Changes the type of the cluster node", args=("type",))
def cmd_change_cluster_node_type(ctx: Context, args: list[str]) -> None:
    kind = args[0]
    if kind not in ("disc", "disk", "ram"):
        ctx.usage_error('node type must be one of: "disc", "ram"')
    kind = "disc" if kind == "disk" else kind
    ctx.info(f"Turning {ctx.options.node} into a {kind} node")
    ctx.call("change_cluster_node_type", {"type": kind})
    _message(ctx, "Node type is already disc")


@command("<count> [--timeout <timeout>]", "Waits for <count> nodes to join the cluster", args=("count",))
def cmd_await_online_nodes(ctx: Context, args: list[str]) -> None:
    try:
        count = int(args[0])
    except ValueError:
        ctx.usage_error(f"{args[0]!r} is not a positive integer")
    if count < 1:
        ctx.usage_error(f"{args[0]!r} is not a positive integer")
    timeout = ctx.options.timeout if ctx.options.timeout is not None else 300.0
    ctx.info(f"Will wait for at least {count} nodes to join the cluster of {ctx.options.node}. "
             f"Timeout: {int(timeout)} seconds.")
    ctx.call("await_online_nodes", {"count": count, "timeout": timeout}, timeout=timeout + 5)
    _done(ctx)


@command("<oldnode1> <newnode1> [oldnode2] [newnode2] ...", "Renames cluster nodes in the local database",
         rest=True)
def cmd_rename_cluster_node(ctx: Context, args: list[str]) -> None:
    # A node's name is in every Raft group it belongs to, its data directory and its peers'
    # configurations; renaming in place is not offered. Say so before touching anything.
    ctx.error("Error: rename_cluster_node is not supported by Leveret: a node's name is part of every "
              "Raft group it belongs to. Add a node under the new name (join_cluster), then remove "
              "the old one (forget_cluster_node).")
    raise Exit(EX_USAGE)


def _full_node_name(name: str) -> str:
    """`name` as rabbitmqctl reads a node argument: a bare name means name@<short hostname>."""
    import socket

    return name if "@" in name else f"{name}@{socket.gethostname().split('.')[0]}"


@command("[--timeout <timeout>]", "DEPRECATED. Performs intrusive, opinionated health checks on a fully booted node. "
         "See https://www.rabbitmq.com/monitoring.html#health-checks instead")
def cmd_node_health_check(ctx: Context, args: list[str]) -> None:
    timeout = ctx.options.timeout if ctx.options.timeout is not None else 70.0
    ctx.info("This command is DEPRECATED and will be removed in a future version.\n"
             "It performs intrusive, opinionated health checks and requires a fully booted node.\n"
             "Use one of the options covered in https://www.rabbitmq.com/monitoring.html#health-checks instead.")
    ctx.info(f"Timeout: {erlang_float(timeout) if timeout != int(timeout) else int(timeout)} seconds ...")
    ctx.info(f"Checking health of node {ctx.options.node} ...")
    # Listing the vhosts needs the application running, as the health check does.
    ctx.call("list_vhosts", timeout=timeout)
    _message(ctx, "Health check passed")


def _erlang_term(value: Any, indent: int = 0, depth: int = 1) -> str:
    if is_container(value) and depth > MAX_TABLE_DEPTH:
        return ELIDED
    if isinstance(value, Mapping):
        pad = " " * (indent + 1)
        inner = (",\n" + pad).join(f"{{{k},{_erlang_term(v, indent + len(str(k)) + 3, depth + 1)}}}"
                                   for k, v in value.items())
        return "[" + inner + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "undefined"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ",".join(_erlang_term(v, indent, depth + 1) for v in value) + "]"
    return str(value)


@command("", "Displays the name and value of each setting of the node")
def cmd_environment(ctx: Context, args: list[str]) -> None:
    ctx.info(f"Application environment of node {ctx.options.node} ...")
    env = ctx.call("environment")
    ctx.out(json_value(env) if ctx.options.formatter == "json" else _erlang_term(env))


@command("", "Generate a server status report containing a concatenation of all server status information")
def cmd_report(ctx: Context, args: list[str]) -> None:
    ctx.info(f"Reporting server status of node {ctx.options.node} ...")
    report = ctx.call("report")
    if ctx.options.formatter == "json":
        ctx.out(json_value(report))
        return
    out = [f"Status of node {ctx.options.node} ...", *_status_lines(report["status"]), ""]
    out.append("Connections:")
    out += table_lines(report["connections"], ("pid", "name", "user", "vhost", "state", "channels"), True)
    out += ["", "Channels:"]
    out += table_lines(report["channels"], ("pid", "name", "user", "vhost", "consumer_count",
                                            "messages_unacknowledged", "prefetch_count"), True)
    for v in report["vhosts"]:
        name = v["vhost"]
        out += ["", f"Queues on {name}:"]
        out += table_lines(v["queues"], ("name", "durable", "auto_delete", "arguments", "policy", "messages",
                                         "messages_ready", "messages_unacknowledged", "consumers", "state"), True)
        out += ["", f"Exchanges on {name}:"]
        out += table_lines(v["exchanges"], ("name", "type", "durable", "auto_delete", "internal", "arguments",
                                            "policy"), True)
        out += ["", f"Bindings on {name}:"]
        out += table_lines(v["bindings"], BINDING_ITEMS, True)
        out += ["", f"Consumers on {name}:"]
        out += table_lines(v["consumers"], CONSUMER_ITEMS, True)
        out += ["", f"Permissions on {name}:"]
        out += table_lines(v["permissions"], ("user", "configure", "write", "read"), True)
        out += ["", f"Policies on {name}:"]
        out += table_lines(v["policies"], ("vhost", "name", "pattern", "apply-to", "definition", "priority"), True)
    ctx.out("\n".join(out))


@command("[--idempotent]", "Stops the node process (stops Leveret and exits)", options={"--idempotent": "flag"})
def cmd_stop(ctx: Context, args: list[str]) -> None:
    ctx.info(f"Stopping and halting node {ctx.options.node} ...")
    ctx.call("stop")
    # Like rabbitmqctl stop: return once the node is gone (its control port closes).
    import socket

    deadline = time.monotonic() + (ctx.options.timeout if ctx.options.timeout is not None else 60.0)
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ctx.host, ctx.options.port), timeout=0.5):
                pass
        except OSError:
            return
        time.sleep(0.1)
    ctx.error(f"Error: operation stop on node {ctx.options.node} timed out.")
    raise Exit(EX_TEMPFAIL)


@command("", "Stops the Leveret application (AMQP listener and client connections), leaving the node running")
def cmd_stop_app(ctx: Context, args: list[str]) -> None:
    ctx.info(f"Stopping leveret application on node {ctx.options.node} ...")
    ctx.call("stop_app")


@command("", "Starts the Leveret application on a node whose application was stopped")
def cmd_start_app(ctx: Context, args: list[str]) -> None:
    ctx.info(f"Starting node {ctx.options.node} ...")
    ctx.call("start_app")


@command("", "Waits for the Leveret application to start on the target node")
def cmd_await_startup(ctx: Context, args: list[str]) -> None:
    import socket

    timeout = ctx.options.timeout if ctx.options.timeout is not None else 300.0
    deadline = time.monotonic() + timeout
    # The node may not be listening yet: wait for its control port first.
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ctx.host, ctx.options.port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    remaining = max(deadline - time.monotonic(), 0.001)
    ctx.call("await_startup", {"timeout": remaining}, timeout=remaining + 1)
    _done(ctx)


# --------------------------------------------------------------------------- resource limits


def _limit_arguments(ctx: Context, args: list[str], keyword: str) -> None:
    """rabbitmqctl's argument count checks for set_vm_memory_high_watermark (`absolute`)
    and set_disk_free_limit (`mem_relative`): usage errors, exit 64."""
    if not args or args == [keyword]:
        ctx.usage_error("not enough arguments.")
    if len(args) > 2 or (len(args) == 2 and args[0] != keyword):
        ctx.usage_error("too many arguments.")


@command("<fraction> | absolute <value>", "Sets the vm_memory_high_watermark setting", rest=True)
def cmd_set_vm_memory_high_watermark(ctx: Context, args: list[str]) -> None:
    node = ctx.options.node
    _limit_arguments(ctx, args, "absolute")
    if len(args) == 2:
        try:
            size = parse_size(args[1])
        except ValueError:
            # rabbitmqctl: a number with a unit it does not know is "Invalid units.".
            ctx.usage_error("Bad argument: Invalid units." if re.match(r"\d", args[1]) else "Bad argument.",
                            EX_DATAERR)
        ctx.info(f"Setting memory threshold on {node} to {args[1]} bytes ...")
        ctx.call("set_vm_memory_high_watermark", {"absolute": size})
        _done(ctx)
        return
    try:
        fraction = float(args[0])
    except ValueError:
        ctx.usage_error("Bad argument.", EX_DATAERR)
    if not 0.0 <= fraction <= 1.0:
        ctx.usage_error("Bad argument: The threshold should be a fraction between 0.0 and 1.0", EX_DATAERR)
    ctx.info(f"Setting memory threshold on {node} to {args[0]} ...")
    ctx.call("set_vm_memory_high_watermark", {"fraction": fraction})
    _done(ctx)


@command("<disk_limit> | mem_relative <fraction>", "Sets the disk_free_limit setting", rest=True)
def cmd_set_disk_free_limit(ctx: Context, args: list[str]) -> None:
    node = ctx.options.node
    _limit_arguments(ctx, args, "mem_relative")
    if len(args) == 2:
        try:
            fraction = float(args[1])
        except ValueError:
            fraction = -1.0
        if not fraction >= 0.0:
            ctx.usage_error("Bad argument.", EX_DATAERR)
        ctx.info(f"Setting disk free limit on {node} to {args[1]} times the total RAM ...")
        ctx.call("set_disk_free_limit", {"mem_relative": fraction})
        _done(ctx)
        return
    try:
        size = parse_size(args[0])
    except ValueError:
        ctx.usage_error("Bad argument.", EX_DATAERR)
    ctx.info(f"Setting disk free limit on {node} to {args[0]} bytes ...")
    ctx.call("set_disk_free_limit", {"absolute": size})
    _done(ctx)


# --------------------------------------------------------------------------- users


def _password(ctx: Context, args: list[str], missing_code: int) -> str:
    """The password argument, else one line of standard input after a "Password: " prompt
    (rabbitmqctl 3.10 reads it so that it stays out of the process list and shell history)."""
    if len(args) > 1:
        return args[1]
    if not (ctx.options.quiet or ctx.options.silent):
        ctx.out("Password: ")
    try:
        line = getpass.getpass("") if sys.stdin is not None and sys.stdin.isatty() else \
            (sys.stdin.readline() if sys.stdin is not None else "")
    except (EOFError, OSError):
        line = ""
    if not line and (sys.stdin is None or not sys.stdin.isatty()):
        ctx.error("Error:\nPassword is not provided via argument or stdin")
        raise Exit(missing_code)
    return line.removesuffix("\n").removesuffix("\r")


_ADD_USER_DONE = ("Done. Don't forget to grant the user permissions to some virtual hosts! "
                  "See 'leveretctl help set_permissions' to learn more.")


@command("<username> <password>", "Creates a new user in the internal database", args=("username",),
         optional=("password",))
def cmd_add_user(ctx: Context, args: list[str]) -> None:
    name = args[0]
    if not name:
        ctx.usage_error("Bad argument: user cannot be an empty string", EX_DATAERR)
    ctx.info(f'Adding user "{name}" ...')
    password = _password(ctx, args, EX_DATAERR)
    ctx.call("add_user", {"name": name, "password": password}, json_error=user_json_error)
    if ctx.options.formatter == "json":
        ctx.out(json_value({"message": _ADD_USER_DONE, "node": ctx.options.node, "status": "ok"}))
    else:
        ctx.info(_ADD_USER_DONE)


@command("<username>", "Removes a user from the internal database", args=("username",))
def cmd_delete_user(ctx: Context, args: list[str]) -> None:
    ctx.info(f'Deleting user "{args[0]}" ...')
    ctx.call("delete_user", {"name": args[0]}, json_error=user_json_error)
    _done(ctx)


@command("<username> <password>", "Changes the user password", args=("username",), optional=("password",))
def cmd_change_password(ctx: Context, args: list[str]) -> None:
    ctx.info(f'Changing password for user "{args[0]}" ...')
    password = _password(ctx, args, EX_SOFTWARE)
    ctx.call("change_password", {"name": args[0], "password": password}, json_error=user_json_error)
    _done(ctx)


@command("<username>", "Clears (resets) password and disables password login for a user", args=("username",))
def cmd_clear_password(ctx: Context, args: list[str]) -> None:
    ctx.info(f'Clearing password for user "{args[0]}" ...')
    ctx.call("clear_password", {"name": args[0]})
    _done(ctx)


@command("<username> <password>", "Attempts to authenticate a user. Exits with a non-zero code if it fails",
         args=("username",), optional=("password",))
def cmd_authenticate_user(ctx: Context, args: list[str]) -> None:
    ctx.info(f'Authenticating user "{args[0]}" ...')
    password = _password(ctx, args, EX_SOFTWARE)
    ctx.call("authenticate_user", {"name": args[0], "password": password})
    _message(ctx, "Success")


@command("<username> <tag> [...]", "Sets user tags", args=("username",), rest=True)
def cmd_set_user_tags(ctx: Context, args: list[str]) -> None:
    name, tags = args[0], args[1:]
    ctx.info(f'Setting tags for user "{name}" to [{", ".join(tags)}] ...')
    ctx.call("set_user_tags", {"name": name, "tags": tags}, json_error=user_json_error)
    _done(ctx)


@command("[--no-table-headers] [--timeout <timeout>]", "List user names and tags")
def cmd_list_users(ctx: Context, args: list[str]) -> None:
    ctx.info("Listing users ...")
    _show_rows(ctx, ctx.call("list_users"), ("user", "tags"))


# --------------------------------------------------------------------------- vhosts


@command("<vhost> [--description <description> --tags \"<tag1>,<tag2>,<...>\" "
         "--default-queue-type <quorum|classic|stream>]", "Creates a virtual host", args=("vhost",),
         options={"--description": "str", "--tags": "str", "--default-queue-type": "str"})
def cmd_add_vhost(ctx: Context, args: list[str]) -> None:
    o = ctx.options.command_options
    ctx.info(f'Adding vhost "{args[0]}" ...')
    ctx.call("add_vhost", {"name": args[0], "description": o.get("description", ""),
                           "tags": [t.strip() for t in o.get("tags", "").split(",") if t.strip()],
                           "default_queue_type": o.get("default_queue_type")})
    _done(ctx)


@command("<vhost>", "Deletes a virtual host", args=("vhost",))
def cmd_delete_vhost(ctx: Context, args: list[str]) -> None:
    ctx.info(f'Deleting vhost "{args[0]}" ...')
    ctx.call("delete_vhost", {"name": args[0]})
    _done(ctx)


# --------------------------------------------------------------------------- permissions


@command("[--vhost <vhost>] <username> <conf> <write> <read>", "Sets user permissions for a vhost",
         args=("username", "conf", "write", "read"))
def cmd_set_permissions(ctx: Context, args: list[str]) -> None:
    user, conf, write, read = args
    vhost = ctx.options.vhost
    ctx.info(f'Setting permissions for user "{user}" in vhost "{vhost}" ...')
    ctx.call("set_permissions", {"vhost": vhost, "user": user, "configure": conf, "write": write, "read": read},
             json_error=permission_json_error)
    _done(ctx)


@command("[--vhost <vhost>] <username>", "Revokes user permissions for a vhost", args=("username",))
def cmd_clear_permissions(ctx: Context, args: list[str]) -> None:
    vhost = ctx.options.vhost
    ctx.info(f'Clearing permissions for user "{args[0]}" in vhost "{vhost}" ...')
    ctx.call("clear_permissions", {"vhost": vhost, "user": args[0]}, json_error=permission_json_error)
    _done(ctx)


@command("[--vhost <vhost>] [--no-table-headers] [--timeout <timeout>]", "Lists user permissions in a virtual host")
def cmd_list_permissions(ctx: Context, args: list[str]) -> None:
    vhost = ctx.options.vhost
    ctx.info(f'Listing permissions for vhost "{vhost}" ...')
    _show_rows(ctx, ctx.call("list_permissions", {"vhost": vhost}), ("user", "configure", "write", "read"))


@command("[--no-table-headers] <username> [--timeout <timeout>]",
         "Lists permissions of a user across all virtual hosts", args=("username",))
def cmd_list_user_permissions(ctx: Context, args: list[str]) -> None:
    ctx.info(f'Listing permissions for user "{args[0]}" ...')
    _show_rows(ctx, ctx.call("list_user_permissions", {"user": args[0]}), ("vhost", "configure", "write", "read"))


@command("[--vhost <vhost>] <username> <exchange> <write> <read>", "Sets user topic permissions for an exchange",
         args=("username", "exchange", "write", "read"))
def cmd_set_topic_permissions(ctx: Context, args: list[str]) -> None:
    user, exchange, write, read = args
    vhost = ctx.options.vhost
    ctx.info(f'Setting topic permissions on "{exchange}" for user "{user}" in vhost "{vhost}" ...')
    ctx.call("set_topic_permissions", {"vhost": vhost, "user": user, "exchange": exchange, "write": write,
                                       "read": read}, json_error=permission_json_error)
    _done(ctx)


@command("[--vhost <vhost>] <username> [<exchange>]", "Clears user topic permissions for a vhost or exchange",
         args=("username",), optional=("exchange",))
def cmd_clear_topic_permissions(ctx: Context, args: list[str]) -> None:
    vhost = ctx.options.vhost
    if len(args) > 1:
        ctx.info(f'Clearing topic permissions on "{args[1]}" for user "{args[0]}" in vhost "{vhost}" ...')
    else:
        ctx.info(f'Clearing topic permissions for user "{args[0]}" in vhost "{vhost}" ...')
    ctx.call("clear_topic_permissions", {"vhost": vhost, "user": args[0],
                                         "exchange": args[1] if len(args) > 1 else None},
             json_error=permission_json_error)
    _done(ctx)


@command("[--vhost <vhost>] [--no-table-headers] [--timeout <timeout>]", "Lists topic permissions in a virtual host")
def cmd_list_topic_permissions(ctx: Context, args: list[str]) -> None:
    vhost = ctx.options.vhost
    ctx.info(f'Listing topic permissions for vhost "{vhost}" ...')
    _show_rows(ctx, ctx.call("list_topic_permissions", {"vhost": vhost}), ("user", "exchange", "write", "read"))


@command("[--no-table-headers] <username> [--timeout <timeout>]", "Lists user topic permissions",
         args=("username",))
def cmd_list_user_topic_permissions(ctx: Context, args: list[str]) -> None:
    ctx.info(f'Listing topic permissions for user "{args[0]}" ...')
    # rabbitmqctl 3.10 prints no header row here.
    _show_rows(ctx, ctx.call("list_user_topic_permissions", {"user": args[0]}),
               ("vhost", "exchange", "write", "read"), headers=False)


# --------------------------------------------------------------------------- policies


@command("[--vhost <vhost>] [--priority <priority>] [--apply-to <apply-to>] <name> <pattern> <definition>",
         "Sets or updates a policy", args=("name", "pattern", "definition"),
         options={"--priority": "int", "--apply-to": "str"})
def cmd_set_policy(ctx: Context, args: list[str]) -> None:
    name, pattern, definition = args
    o = ctx.options.command_options
    priority = o.get("priority", 0)
    vhost = ctx.options.vhost
    ctx.info(f'Setting policy "{name}" for pattern "{pattern}" to "{definition}" with priority "{priority}" '
             f'for vhost "{vhost}" ...')
    ctx.call("set_policy", {"vhost": vhost, "name": name, "pattern": pattern, "definition": definition,
                            "priority": priority, "apply_to": o.get("apply_to", "all")})
    _done(ctx)


@command("[--vhost <vhost>] <name>", "Clears (removes) a policy", args=("name",))
def cmd_clear_policy(ctx: Context, args: list[str]) -> None:
    vhost = ctx.options.vhost
    ctx.info(f'Clearing policy "{args[0]}" on vhost "{vhost}" ...')
    ctx.call("clear_policy", {"vhost": vhost, "name": args[0]})
    _done(ctx)


@command("[--vhost <vhost>] [--no-table-headers] [--timeout <timeout>]", "Lists all policies in a virtual host")
def cmd_list_policies(ctx: Context, args: list[str]) -> None:
    vhost = ctx.options.vhost
    ctx.info(f'Listing policies for vhost "{vhost}" ...')
    _show_rows(ctx, ctx.call("list_policies", {"vhost": vhost}),
               ("vhost", "name", "pattern", "apply-to", "definition", "priority"))


# --------------------------------------------------------------------------- operations


@command("<queue> [--timeout <timeout>]", "Purges a queue (removes all messages in it)", args=("queue",))
def cmd_purge_queue(ctx: Context, args: list[str]) -> None:
    vhost = ctx.options.vhost
    ctx.info(f"Purging queue '{args[0]}' in vhost '{vhost}' ...")
    ctx.call("purge_queue", {"vhost": vhost, "name": args[0]})
    _done(ctx)


@command("<queue_name> [--if-empty|-e] [--if-unused|-u] [--timeout <timeout>]", "Deletes a queue", args=("queue",),
         options={"--if-empty": "flag", "-e": "flag", "--if-unused": "flag", "-u": "flag"})
def cmd_delete_queue(ctx: Context, args: list[str]) -> None:
    if not args[0]:
        ctx.usage_error("Bad argument: queue name cannot be an empty string", EX_DATAERR)
    o = ctx.options.command_options
    if_empty = bool(o.get("if_empty") or o.get("e"))
    if_unused = bool(o.get("if_unused") or o.get("u"))
    vhost = ctx.options.vhost
    condition = ""
    if if_empty and if_unused:
        condition = " if queue is empty and if queue is unused"
    elif if_empty:
        condition = " if queue is empty"
    elif if_unused:
        condition = " if queue is unused"
    ctx.info(f"Deleting queue '{args[0]}' on vhost '{vhost}'{condition} ...")
    count = ctx.call("delete_queue", {"vhost": vhost, "name": args[0], "if_empty": if_empty,
                                      "if_unused": if_unused})
    _message(ctx, f"Queue was successfully deleted with {count} ready messages")


@command("<connection pid> <explanation>", "Instructs the broker to close the connection with this pid (or name)",
         args=("connection", "explanation"))
def cmd_close_connection(ctx: Context, args: list[str]) -> None:
    ctx.info(f"Closing connection {args[0]}, reason: {args[1]}...")
    ctx.call("close_connection", {"connection": args[0], "reason": args[1]})
    _done(ctx)


@command("[--vhost <vhost> --limit <limit>] [-n <node> --global] [--per-connection-delay <delay>] <explanation>",
         "Instructs the broker to close all connections for the specified vhost or the entire node",
         args=("explanation",), options={"--global": "flag", "--limit": "int", "--per-connection-delay": "int"})
def cmd_close_all_connections(ctx: Context, args: list[str]) -> None:
    o = ctx.options.command_options
    reason = args[0]
    # rabbitmqctl: --limit 0 (the default) means every connection; --global ignores --limit.
    limit = int(o.get("limit") or 0)
    request: dict[str, Any] = {"reason": reason, "limit": None}
    if o.get("global"):
        ctx.info(f"Closing all connections to node {ctx.options.node} (across all vhosts), reason: {reason}...")
    else:
        request["vhost"] = ctx.options.vhost
        request["limit"] = limit or None
        which = f"{limit} connections" if limit else "all connections"
        ctx.info(f"Closing {which} in vhost {ctx.options.vhost}, reason: {reason}...")
    closed = ctx.call("close_all_connections", request)
    if ctx.options.formatter == "json":
        ctx.out(json_value({"node": ctx.options.node, "result": "ok", "value": f"Closed {closed} connections"}))
    else:
        ctx.out(f"Closed {closed} connections")


# --------------------------------------------------------------------------- replication


@command("[--vhost <vhost>] <queue>",
         "Instructs a mirrored queue with unsynchronised mirrors (follower replicas) to synchronise them",
         args=("queue",))
def cmd_sync_queue(ctx: Context, args: list[str]) -> None:
    vhost = ctx.options.vhost
    ctx.info(f"Synchronising queue '{args[0]}' in vhost '{vhost}' ...")
    ctx.call("sync_queue", {"vhost": vhost, "name": args[0]})
    _done(ctx)


@command("[--vhost <vhost>] <queue>", "Instructs a synchronising mirrored queue to stop synchronising itself",
         args=("queue",))
def cmd_cancel_sync_queue(ctx: Context, args: list[str]) -> None:
    vhost = ctx.options.vhost
    ctx.info(f"Stopping synchronising queue '{args[0]}' in vhost '{vhost}' ...")
    value = ctx.call("cancel_sync_queue", {"vhost": vhost, "name": args[0]})
    if value is None:
        _done(ctx)
    elif ctx.options.formatter == "json":
        # rabbitmqctl 3.10.8: {"node":...,"result":"ok","value":"not_syncing"}, exit 0.
        ctx.out(json_value({"node": ctx.options.node, "result": "ok", "value": value}))
    else:
        ctx.out(str(value))


REBALANCE_COLUMNS = ("Node name", "Number of quorum queues", "Number of replicated classic queues")


@command("[<all | classic | quorum>] [--vhost-pattern <pattern>] [--queue-pattern <pattern>]",
         "Re-balances leaders of replicated queues across up-and-running cluster nodes",
         optional=("type",), options={"--vhost-pattern": "str", "--queue-pattern": "str"})
def cmd_rebalance_queues(ctx: Context, args: list[str]) -> None:
    """rabbitmq-queues rebalance: the same banner, summary and exit codes."""
    kind = args[0] if args else "all"
    o = ctx.options.command_options
    if kind in ("all", "classic", "quorum"):
        ctx.info(f"Re-balancing leaders of {kind} queues...")
    summary = ctx.call("rebalance_queues", {"type": kind, "vhost_pattern": o.get("vhost_pattern", ".*"),
                                            "queue_pattern": o.get("queue_pattern", ".*")})
    rows = [[s["node"], s["quorum"], s["classic"]] for s in summary]
    if ctx.options.formatter == "json":
        value = [[list(pair) for pair in zip(REBALANCE_COLUMNS, row)] for row in rows]
        ctx.out(json_value({"node": ctx.options.node, "result": "ok", "value": value}))
        return
    # No queue to count: rabbitmq-queues prints its empty result as a one-cell table.
    for line in box_lines(REBALANCE_COLUMNS, rows) if rows else box_lines(("Output",), [["[]"]]):
        ctx.out(line)


# --------------------------------------------------------------------------- definitions


@command("<file_path | \"-\"> [--format <json>] [--timeout <timeout>]",
         "Exports definitions in JSON", args=("path",), options={"--format": "str"})
def cmd_export_definitions(ctx: Context, args: list[str]) -> None:
    path = args[0]
    if ctx.options.command_options.get("format", "json") != "json":
        ctx.usage_error("Format should be either 'json' (only JSON is supported)")
    if path != "-":
        directory = Path(path).parent
        if not directory.is_dir():
            ctx.usage_error(f"Bad argument: Directory {directory} does not exist", EX_DATAERR)
        ctx.info(f'Exporting definitions in JSON to a file at "{path}" ...')
    definitions = ctx.call("export_definitions")
    text = json.dumps(definitions, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    if path == "-":
        ctx.out(text)
        return
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        ctx.error(f"Error:\nFailed to write definitions to {path}: {exc.strerror or exc}")
        raise Exit(EX_DATAERR) from None


@command("<file_path | \"-\"> [--format <json>] [--skip-if-unchanged] [--timeout <timeout>]",
         "Imports definitions in JSON (as exported by RabbitMQ or Leveret)", args=("path",),
         options={"--format": "str", "--skip-if-unchanged": "flag"})
def cmd_import_definitions(ctx: Context, args: list[str]) -> None:
    path = args[0]
    if path == "-":
        text = sys.stdin.read()
        ctx.info("Importing definitions in JSON from standard input ...")
    else:
        if not Path(path).is_file():
            ctx.usage_error(f"Bad argument: File {path} does not exist", EX_DATAERR)
        ctx.info(f'Importing definitions in JSON from a file at "{path}" ...')
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            ctx.error(f"Error:\nFailed to read definitions from {path}: {exc.strerror or exc}")
            raise Exit(EX_DATAERR) from None
    try:
        definitions = json.loads(text)
    except ValueError as exc:
        ctx.error(f"Error:\nFailed to deserialise input (format: JSON) (error: {exc})")
        raise Exit(EX_DATAERR) from None
    if not isinstance(definitions, dict):
        ctx.error("Error:\nFailed to deserialise input (format: JSON) (error: not a JSON object)")
        raise Exit(EX_DATAERR)
    counts = ctx.call("import_definitions", {"definitions": definitions})
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or "nothing"
    ctx.info(f"Successfully imported definitions ({summary}).")


# --------------------------------------------------------------------------- help

# rabbitmqctl 3.10's command groups, in its order, holding the commands Leveret has
# (`help` itself is listed by cli.ctl). tests/ctl checks that every command is in one.
_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Help", ("version",)),
    ("Nodes", ("await_startup", "start_app", "stop", "stop_app")),
    ("Cluster", ("await_online_nodes", "change_cluster_node_type", "cluster_status", "forget_cluster_node",
                 "force_reset", "join_cluster", "rename_cluster_node", "reset")),
    # rebalance_queues is rabbitmq-queues' `rebalance`, grouped here with the other replica commands.
    ("Replication", ("cancel_sync_queue", "rebalance_queues", "sync_queue")),
    ("Users", ("add_user", "authenticate_user", "change_password", "clear_password", "delete_user", "list_users",
               "set_user_tags")),
    ("Access Control", ("clear_permissions", "clear_topic_permissions", "list_permissions", "list_topic_permissions",
                        "list_user_permissions", "list_user_topic_permissions", "list_vhosts", "set_permissions",
                        "set_topic_permissions")),
    ("Monitoring, observability and health checks", ("list_bindings", "list_channels", "list_connections",
                                                     "list_consumers", "list_exchanges", "list_queues", "ping",
                                                     "report", "status")),
    ("Policies", ("clear_policy", "list_policies", "set_policy")),
    ("Virtual hosts", ("add_vhost", "delete_vhost")),
    ("Configuration and Environment", ("environment", "set_disk_free_limit", "set_vm_memory_high_watermark")),
    ("Definitions", ("export_definitions", "import_definitions")),
    ("Operations", ("close_all_connections", "close_connection")),
    ("Queues", ("delete_queue", "purge_queue")),
    ("Deprecated", ("node_health_check",)),
)
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (group, tuple(n for n in names if n in COMMANDS)) for group, names in _GROUPS
    if any(n in COMMANDS for n in names))
