"""The management HTTP API's handlers: RabbitMQ 3.10's status codes and JSON for each route
of `broker.management.routes`.

Handlers are thin: read the path and body (`requests`), check the caller (`access`),
read through `NodeView` or change through the node's `propose_metadata`, and shape the
answer (`shapes`, `listing`). A refusal is an `ApiError`, turned into RabbitMQ's JSON at
the boundary (`routes`). Queue actions that are not metadata (publish, get, purge)
go to the queue's leader as an AMQP channel's would, after the same permission checks.
"""

from __future__ import annotations

import json
import logging
import platform
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from broker import __version__, auth
from broker.amqp import spec
from broker.arguments import check_declare_arguments, check_quorum_declare, parse_expiration
from broker.control_handlers import import_commands
from broker.management import access, shapes
from broker.management.errors import LOGIN_FAILED, NOT_FOUND, ApiError, bad_request, not_authorised, not_found
from broker.management.listing import apply_list_query, parse_bool, parse_list_query
from broker.management.rates import (
    QUEUE_TOTALS,
    SampleRange,
    chart_ranges,
    charts,
    counters_message_stats,
    sum_counts,
    sum_rates,
    sum_values,
    with_details,
)
from broker.management.requests import (
    bool_field,
    check_base64,
    check_regexes,
    exchange_name,
    int_field,
    missing_keys,
    object_field,
    parse_body,
    path_name,
    payload_field,
    properties_field,
    refusal_reason,
    str_field,
    tags_field,
)
from broker.cluster_view import ClusterView
from broker.node_view import SETTLE_MODES, NodeView
from broker.queue_client import QueueUnavailable
from broker.replica_status import COUNTERS, HISTORY, HISTORY_GROUPS, RATES
from cluster import metadata as md
from cluster.nesting import MAX_TABLE_DEPTH
from cluster.policy import validate_policy

if TYPE_CHECKING:
    from broker.node import Node

log = logging.getLogger("leveret.management")

GET_ENCODINGS = ("auto", "base64")
# The vhost aliveness-test declares, publishes to and gets from (as RabbitMQ's does).
ALIVENESS_QUEUE = "aliveness-test"


@dataclass(slots=True)
class Call:
    """One request, once its caller is known: what handlers read."""

    request: Request
    who: access.Principal
    params: dict[str, str]

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query_params

    async def body(self) -> dict[str, Any]:
        body = parse_body(await self.request.body())
        if isinstance(body, ApiError):
            raise body
        return body


Handler = Callable[["ManagementApi", Call], Awaitable[Response]]


def _check(refusal: ApiError | None) -> None:
    if refusal is not None:
        raise refusal


T = TypeVar("T")


def _found(value: T | None) -> T:
    """The object a path names; 404 when there is none."""
    if value is None:
        raise NOT_FOUND
    return value


def json_reply(value: Any, status: int = 200) -> Response:
    return JSONResponse(value, status_code=status)


def no_content() -> Response:
    return Response(status_code=204)


def created_or_updated(existed: bool) -> Response:
    return Response(status_code=204 if existed else 201)


def _amqp_refusal(refusal: Any) -> ApiError:
    """An AMQP-style refusal (metadata `Refusal` or `auth.AccessRefused`) as RabbitMQ's API answers it."""
    code = getattr(refusal, "code", None) or getattr(refusal, "reply_code", 0)
    text = getattr(refusal, "text", None) or getattr(refusal, "reply_text", "")
    if code == spec.ACCESS_REFUSED:
        return not_authorised(text)
    if code == spec.NOT_FOUND:
        return not_found(refusal_reason(text))
    return bad_request(refusal_reason(text))


def unavailable(outcome: QueueUnavailable) -> ApiError:
    """A queue whose leader cannot be asked: 404 quoting why, as RabbitMQ answers an operation
    on a queue whose home node is down (the channel's NOT_FOUND, passed on)."""
    return not_found(outcome.text)


class ManagementApi:
    """The handlers, sharing the node and its views (this node's, the cluster's)."""

    def __init__(self, node: "Node") -> None:
        self.view = NodeView(node)
        self.cluster = ClusterView(node)

    # ------------------------------------------------------------------ plumbing

    def authenticate(self, request: Request) -> access.Principal | ApiError:
        credentials = access.basic_credentials(request.headers.get("authorization"))
        if credentials is None:
            return LOGIN_FAILED
        username, password = credentials
        meta = self.view.metadata
        client = request.client.host if request.client is not None else ""
        login = auth.authenticate(meta.user(username), username, password, mechanism="PLAIN",
                                  local_address=client, loopback_users=self.view.loopback_users)
        if isinstance(login, auth.LoginRefused):
            log.warning("HTTP access denied: %s", login.log_message)
            return LOGIN_FAILED
        refusal = access.require_management(login.tags)
        if refusal is not None:
            return refusal
        vhosts = frozenset(p.vhost for p in meta.permissions(user=login.username))
        return access.Principal(login.username, frozenset(login.tags), vhosts)

    def listed(self, call: Call, items: list[dict[str, Any]]) -> Response:
        query = parse_list_query(call.query)
        if isinstance(query, ApiError):
            raise query
        answer = apply_list_query(items, query)
        if isinstance(answer, ApiError):
            raise answer
        return json_reply(answer)

    def one(self, call: Call, item: dict[str, Any]) -> Response:
        """A single object, cut to `columns` if asked (as RabbitMQ allows on GET of one)."""
        query = parse_list_query({k: v for k, v in call.query.items() if k == "columns"})
        assert not isinstance(query, ApiError)
        answer = apply_list_query([item], query)
        assert isinstance(answer, list)
        return json_reply(answer[0])

    async def propose(self, cmd: md.Command) -> Any:
        result = await self.view.propose(cmd)
        if isinstance(result, md.Refusal):
            raise _amqp_refusal(result)
        return result

    def permission_of(self, call: Call, vhost: str) -> md.Permission | None:
        return self.view.metadata.permission(vhost, call.who.name)

    def check_amqp(self, call: Call, vhost: str, checks: tuple[auth.Check, ...]) -> None:
        """The caller's AMQP permissions for an operation on `vhost` (as its direct connection's)."""
        _check(access.require_vhost(call.who, vhost))
        refused = auth.check_all(call.who.name, self.permission_of(call, vhost), checks)
        if refused is not None:
            raise _amqp_refusal(refused)

    def require_vhost_exists(self, vhost: str) -> None:
        if self.view.metadata.vhost(vhost) is None:
            raise not_found("vhost_not_found")

    def visible_vhosts(self, call: Call, vhost: str | None) -> list[str]:
        """The vhosts a listing covers: one (404 if missing, 401 if not the caller's) or all it sees."""
        meta = self.view.metadata
        if vhost is not None:
            if meta.vhost(vhost) is None:
                raise NOT_FOUND
            if not call.who.sees_vhost(vhost):
                raise not_authorised("User not authorised to access virtual host")
            return [vhost]
        return [v.name for v in meta.vhosts() if call.who.sees_vhost(v.name)]

    def listing_vhosts(self, call: Call) -> list[str]:
        """The vhosts a list route covers: the one in its path, or all the caller sees."""
        vhost = call.params.get("vhost")
        return self.visible_vhosts(call, path_name(vhost) if vhost is not None else None)

    # ------------------------------------------------------------------ rates

    @staticmethod
    def queue_counts(row: Mapping[str, Any]) -> dict[str, int]:
        """A queue row's message_stats counts, from the counters its leader answered with."""
        return counters_message_stats(row.get(COUNTERS))

    @staticmethod
    def queue_rates(row: Mapping[str, Any]) -> Mapping[str, float]:
        """A queue row's rates, as its leader's node sampled them (none: every rate 0.0)."""
        rates = row.get(RATES)
        return rates if isinstance(rates, Mapping) else {}

    def chart_ranges(self, call: Call) -> dict[str, SampleRange]:
        """The charts the request asks for (`msg_rates_age` / `msg_rates_incr`, `lengths_age` /
        `lengths_incr`), ending now; none when it asks for none."""
        ranges = chart_ranges(call.query, self.view.node.now_ms())
        if isinstance(ranges, str):
            raise bad_request(ranges)
        return ranges

    @staticmethod
    def charted(rows: list[Mapping[str, Any]], ranges: Mapping[str, SampleRange]) -> dict[str, dict[str, Any]]:
        """The chart items of a set of queues (one queue's, a vhost's, the overview's): the sum
        of their past values at each time (a queue whose leader did not answer counts 0)."""
        if not ranges:
            return {}
        histories = [row.get(HISTORY) or {} for row in rows]
        summed: dict[str, list[int]] = {}
        for group, at in ranges.items():
            summed.update(sum_values(histories, HISTORY_GROUPS[group], at))
        return charts(summed, ranges)

    # ------------------------------------------------------------------ overview and nodes

    async def overview(self, call: Call) -> Response:
        view = self.view
        meta = view.metadata
        vhosts = self.visible_vhosts(call, None)
        ranges = self.chart_ranges(call)
        queues = await self.cluster.queue_rows(vhosts, ranges)
        charted = self.charted(queues, ranges)
        totals = sum_counts([{k: r[k] for k in QUEUE_TOTALS} for r in queues])
        stats = sum_counts([self.queue_counts(r) for r in queues])
        rates = sum_rates([self.queue_rates(r) for r in queues])
        clients = await self.cluster.clients()
        connections = [r for r in clients.connections if call.who.sees_user_objects(r["user"])]
        channels = [r for r in clients.channels if call.who.sees_user_objects(r["user"])]
        return self.one(call, {
            "management_version": shapes.RABBITMQ_VERSION,
            "rates_mode": "basic",
            "sample_retention_policies": {"global": [600, 3600, 28800, 86400], "basic": [600, 3600],
                                          "detailed": [600]},
            "exchange_types": shapes.exchange_types(),
            "product_version": __version__,
            "product_name": "Leveret",
            "rabbitmq_version": shapes.RABBITMQ_VERSION,
            "cluster_name": view.cluster_name,
            "erlang_version": platform.python_version(),
            "erlang_full_version": f"Python {platform.python_version()}",
            "disable_stats": False,
            "enable_queue_totals": False,
            "message_stats": with_details(stats, rates, tuple(sorted(stats)), charted),
            "churn_rates": {},
            "queue_totals": with_details(totals, rates, QUEUE_TOTALS, charted),
            "object_totals": {
                "channels": len(channels),
                "connections": len(connections),
                "consumers": sum(r["consumers"] for r in queues),
                "exchanges": sum(len(meta.exchanges(v)) for v in vhosts),
                "queues": len(queues),
            },
            "statistics_db_event_queue": 0,
            "node": view.node_name,
            "listeners": self.listeners_json(),
            "contexts": self.contexts_json(),
        })

    def listeners_json(self) -> list[dict[str, Any]]:
        return [{"node": self.view.node_name, "protocol": proto, "ip_address": host, "port": port,
                 "socket_opts": {}} for proto, host, port in self.view.listeners]

    def contexts_json(self) -> list[dict[str, Any]]:
        return [{"ssl_opts": [], "node": self.view.node_name, "description": "Leveret Management", "path": "/",
                 "port": str(port)} for proto, _host, port in self.view.listeners if proto == "http"]

    async def nodes_json(self) -> list[dict[str, Any]]:
        """Every member of the cluster with its own figures, asked of it over the peer link;
        one that cannot be reached shows as not running (RabbitMQ's shape for a down node)."""
        return [shapes.node_json(r.name, r.status, r.processors, r.partitions)
                for r in await self.cluster.node_reports()]

    async def nodes(self, call: Call) -> Response:
        _check(access.require_monitor(call.who))
        return self.listed(call, await self.nodes_json())

    async def node(self, call: Call) -> Response:
        _check(access.require_monitor(call.who))
        name = path_name(call.params["node"])
        return self.one(call, _found(next((n for n in await self.nodes_json() if n["name"] == name), None)))

    async def cluster_name(self, call: Call) -> Response:
        return json_reply({"name": self.view.cluster_name})

    async def extensions(self, call: Call) -> Response:
        return json_reply([])

    async def whoami(self, call: Call) -> Response:
        return json_reply({"name": call.who.name, "tags": sorted(call.who.tags)})

    # ------------------------------------------------------------------ connections, channels, consumers

    # Every member's, each on the node its connection is on (broker.cluster_clients).

    async def visible_connections(self, call: Call, vhost: str | None = None) -> list[dict[str, Any]]:
        return [shapes.connection_json(r, r["node"]) for r in (await self.cluster.clients()).connections
                if call.who.sees_user_objects(r["user"]) and (vhost is None or r["vhost"] == vhost)]

    async def visible_channels(self, call: Call, vhost: str | None = None) -> list[dict[str, Any]]:
        return [shapes.channel_json(r, r["node"]) for r in (await self.cluster.clients()).channels
                if call.who.sees_user_objects(r["user"]) and (vhost is None or r["vhost"] == vhost)]

    async def connections(self, call: Call) -> Response:
        return self.listed(call, await self.visible_connections(call))

    async def vhost_connections(self, call: Call) -> Response:
        vhost = self.visible_vhosts(call, path_name(call.params["vhost"]))[0]
        return self.listed(call, await self.visible_connections(call, vhost))

    async def find_connection(self, call: Call) -> dict[str, Any]:
        name = path_name(call.params["connection"])
        found = _found(next((c for c in await self.visible_connections(call) if c["name"] == name), None))
        return found

    async def connection(self, call: Call) -> Response:
        return self.one(call, await self.find_connection(call))

    async def close_connection(self, call: Call) -> Response:
        found = await self.find_connection(call)
        name, where = found["name"], found["node"]
        reason = call.request.headers.get("x-reason") or "Closed via management plugin"
        log.info("closing connection %s on %s on request of %s over HTTP: %s", name, where, call.who.name, reason)
        # On the node the connection is on, which may be another member.
        if not await self.cluster.close_connection(where, name, reason):
            raise NOT_FOUND  # gone between the lookup and the close (or its node went away)
        return no_content()

    async def connection_channels(self, call: Call) -> Response:
        name = (await self.find_connection(call))["name"]
        return self.listed(call, [c for c in await self.visible_channels(call)
                                  if c["connection_details"]["name"] == name])

    async def channels(self, call: Call) -> Response:
        return self.listed(call, await self.visible_channels(call))

    async def vhost_channels(self, call: Call) -> Response:
        vhost = self.visible_vhosts(call, path_name(call.params["vhost"]))[0]
        return self.listed(call, await self.visible_channels(call, vhost))

    async def channel(self, call: Call) -> Response:
        name = path_name(call.params["channel"])
        found = _found(next((c for c in await self.visible_channels(call) if c["name"] == name), None))
        return self.one(call, found)

    async def consumers_of(self, vhosts: list[str], queue: str | None = None) -> list[dict[str, Any]]:
        """The consumers of the queues of `vhosts` (of one queue, named), wherever their
        connections and queues are."""
        wanted = set(vhosts)
        return [shapes.consumer_json(r, r["node"]) for r in (await self.cluster.clients()).consumers
                if r["vhost"] in wanted and (queue is None or r["queue_name"] == queue)]

    async def consumers(self, call: Call) -> Response:
        return self.listed(call, await self.consumers_of(self.listing_vhosts(call)))

    # ------------------------------------------------------------------ exchanges

    async def exchanges(self, call: Call) -> Response:
        vhosts = self.listing_vhosts(call)
        return self.listed(call, [shapes.exchange_json(r) for v in vhosts for r in self.view.exchange_rows(v)])

    def exchange_row(self, call: Call) -> dict[str, Any]:
        vhost = self.visible_vhosts(call, path_name(call.params["vhost"]))[0]
        name = exchange_name(call.params["exchange"])
        row = _found(next((r for r in self.view.exchange_rows(vhost) if r["name"] == name), None))
        return row

    async def exchange(self, call: Call) -> Response:
        return self.one(call, shapes.exchange_json(self.exchange_row(call)))

    async def put_exchange(self, call: Call) -> Response:
        vhost, name = path_name(call.params["vhost"]), exchange_name(call.params["exchange"])
        self.require_vhost_exists(vhost)
        body = await call.body()
        type_name = str_field(body, "type", "direct")
        durable = bool_field(body, "durable", False)  # RabbitMQ 3.10: an exchange PUT without it is transient
        auto_delete = bool_field(body, "auto_delete", False)
        internal = bool_field(body, "internal", False)
        arguments = object_field(body, "arguments")
        refused = md.exchange_type_refusal(type_name) or auth.default_exchange_refusal(name)
        if refused is not None:
            raise _amqp_refusal(refused)
        existed = self.view.metadata.exchange(vhost, name) is not None
        ae = arguments.get("alternate-exchange")
        self.check_amqp(call, vhost, auth.checks_for_exchange_declare(
            vhost, name, passive=False, creates=not existed, alternate_exchange=ae if isinstance(ae, str) else None))
        await self.propose(md.DeclareExchange(vhost, name, type_name, durable, auto_delete, internal, arguments))
        return created_or_updated(existed)

    async def delete_exchange(self, call: Call) -> Response:
        vhost, name = path_name(call.params["vhost"]), exchange_name(call.params["exchange"])
        self.exchange_row(call)
        self.check_amqp(call, vhost, auth.checks_for_exchange_delete(vhost, name))
        await self.propose(md.DeleteExchange(vhost, name, parse_bool(call.query.get("if-unused"))))
        return no_content()

    async def publish(self, call: Call) -> Response:
        vhost, name = path_name(call.params["vhost"]), exchange_name(call.params["exchange"])
        self.visible_vhosts(call, vhost)
        body = await call.body()
        _check(missing_keys(body, "routing_key", "properties", "payload", "payload_encoding"))
        routing_key = str_field(body, "routing_key", "")
        payload = payload_field(body)
        properties = properties_field(object_field(body, "properties", MAX_TABLE_DEPTH + 1), call.who.name)
        self.check_amqp(call, vhost, auth.checks_for_publish(vhost, name))
        refused = self.view.exchange_accepts_publish(vhost, name)
        if refused is not None:
            # RabbitMQ answers these 400, quoting the channel error with its code.
            raise bad_request(f"{refused.code} {refused.text}")
        record = self.view.metadata.exchange(vhost, name)
        if record is not None and name:
            topic = self.view.metadata.topic_permissions(vhost, call.who.name, name)
            refused = auth.check_topic_access(call.who.name, topic[0] if topic else None, vhost=vhost, exchange=name,
                                              exchange_type=record.type, routing_key=routing_key,
                                              access=auth.Access.WRITE)
            if refused is not None:
                raise _amqp_refusal(refused)
        expiration_ms = None
        if properties.expiration is not None:
            parsed = parse_expiration(properties.expiration)
            if not isinstance(parsed, int):
                raise bad_request(f"invalid 'expiration' property: {json.dumps(properties.expiration)}")
            expiration_ms = parsed
        routed = self.view.publish(vhost, name, routing_key, properties, payload, expiration_ms)
        return json_reply({"routed": routed})

    # ------------------------------------------------------------------ queues

    def queue_json(self, row: dict[str, Any], ranges: Mapping[str, SampleRange] | None = None) -> dict[str, Any]:
        return shapes.queue_json(row, self.queue_counts(row), self.queue_rates(row),
                                 self.charted([row], ranges or {}))

    async def queues(self, call: Call) -> Response:
        # Each queue as its leader sees it, wherever it is led (broker.replica_status).
        ranges = self.chart_ranges(call)
        rows = await self.cluster.queue_rows(self.listing_vhosts(call), ranges)
        return self.listed(call, [self.queue_json(r, ranges) for r in rows])

    def queue_record(self, call: Call) -> md.QueueRecord:
        vhost = self.visible_vhosts(call, path_name(call.params["vhost"]))[0]
        q = _found(self.view.metadata.queue(vhost, path_name(call.params["queue"])))
        return q

    async def queue(self, call: Call) -> Response:
        q = self.queue_record(call)
        ranges = self.chart_ranges(call)
        item = self.queue_json(await self.cluster.queue_row(q, ranges), ranges)
        item["consumer_details"] = await self.consumers_of([q.vhost], q.name)
        item["deliveries"] = []
        item["incoming"] = []
        return self.one(call, item)

    async def put_queue(self, call: Call) -> Response:
        vhost, name = path_name(call.params["vhost"]), path_name(call.params["queue"])
        self.require_vhost_exists(vhost)
        body = await call.body()
        durable = bool_field(body, "durable", False)
        auto_delete = bool_field(body, "auto_delete", False)
        arguments = object_field(body, "arguments")
        refused = md.reserved_queue_name_refusal(name, False)
        if refused is not None:
            raise _amqp_refusal(refused)
        existed = self.view.metadata.queue(vhost, name) is not None
        dlx = arguments.get("x-dead-letter-exchange")
        self.check_amqp(call, vhost, auth.checks_for_queue_declare(
            vhost, name, passive=False, creates=not existed,
            dead_letter_exchange=dlx if isinstance(dlx, str) else None))
        if not existed:
            refused = check_declare_arguments(name, vhost, arguments) or check_quorum_declare(
                name, vhost, arguments, durable=durable, exclusive=False, auto_delete=auto_delete)
            if refused is not None:
                raise _amqp_refusal(refused)
        await self.propose(md.DeclareQueue(vhost, name, durable, auto_delete, None, arguments, self.view.node_name))
        return created_or_updated(existed)

    async def delete_queue(self, call: Call) -> Response:
        q = self.queue_record(call)
        self.check_amqp(call, q.vhost, auth.checks_for_queue_delete(q.vhost, q.name))
        lengths = await self.cluster.queue_lengths(q.vhost, q.name)
        if isinstance(lengths, QueueUnavailable) and (parse_bool(call.query.get("if-empty"))
                                                      or parse_bool(call.query.get("if-unused"))):
            raise unavailable(lengths)  # the conditions cannot be checked without the leader
        ready, consumers = lengths if isinstance(lengths, tuple) else (0, 0)
        # RabbitMQ checks if-empty (ready messages) before if-unused.
        if parse_bool(call.query.get("if-empty")) and ready:
            raise bad_request(f"queue '{q.name}' in vhost '{q.vhost}' not empty")
        if parse_bool(call.query.get("if-unused")) and consumers:
            raise bad_request(f"queue '{q.name}' in vhost '{q.vhost}' in use")
        await self.propose(md.DeleteQueue(q.vhost, q.name, None))
        return no_content()

    def queue_for_action(self, call: Call, checks: Callable[[str, str], tuple[auth.Check, ...]]) -> md.QueueRecord:
        """The queue of a purge or get, once the caller's permissions allow it."""
        q = self.queue_record(call)
        self.check_amqp(call, q.vhost, checks(q.vhost, q.name))
        if q.exclusive_owner is not None:
            raise bad_request(f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q.name}' "
                              f"in vhost '{q.vhost}'")
        return q

    async def purge_queue(self, call: Call) -> Response:
        q = self.queue_for_action(call, auth.checks_for_queue_purge)
        purged = await self.cluster.purge(q.vhost, q.name)
        if purged is None:
            raise NOT_FOUND
        if isinstance(purged, QueueUnavailable):
            raise unavailable(purged)
        return no_content()

    async def get_messages(self, call: Call) -> Response:
        q = self.queue_for_action(call, auth.checks_for_consume)
        body = await call.body()
        _check(missing_keys(body, "count", "ackmode", "encoding"))
        count = int_field(body, "count", 1) or 0
        ackmode = str_field(body, "ackmode", "")
        encoding = str_field(body, "encoding", "auto")
        truncate = int_field(body, "truncate", None)
        if ackmode not in SETTLE_MODES:
            raise bad_request(f"'ackmode' must be one of {', '.join(SETTLE_MODES)}, got {json.dumps(ackmode)}")
        if encoding not in GET_ENCODINGS:
            raise bad_request(f"'encoding' must be auto or base64, got {json.dumps(encoding)}")
        taken = _found(await self.cluster.get_messages(q.vhost, q.name, count, ackmode))
        if isinstance(taken, QueueUnavailable):
            raise unavailable(taken)
        return json_reply([shapes.message_json(g.message, g.redelivered, g.remaining, encoding, truncate)
                           for g in taken])

    async def queue_actions(self, call: Call) -> Response:
        q = self.queue_record(call)
        _check(access.require_vhost(call.who, q.vhost))
        body = await call.body()
        _check(missing_keys(body, "action"))
        action = body["action"]
        if action not in ("sync", "cancel_sync"):
            raise bad_request(f"'action' must be sync or cancel_sync, got {json.dumps(action)}")
        # As RabbitMQ's: the request goes to the queue's leader and the answer does not wait
        # for the outcome (a queue without mirrors, or whose leader is away, has nothing done).
        synced = await self.cluster.sync(q.vhost, q.name, cancel=action == "cancel_sync")
        log.info("%s of queue '%s' in vhost '%s' asked by %s over HTTP: %s", action, q.name, q.vhost, call.who.name,
                 "taken by its leader" if synced else "nothing to do")
        return no_content()

    # ------------------------------------------------------------------ bindings

    async def bindings(self, call: Call) -> Response:
        vhosts = self.listing_vhosts(call)
        return self.listed(call, [b for v in vhosts for b in shapes.bindings_json(self.view.metadata, v)])

    async def exchange_bindings(self, call: Call) -> Response:
        row = self.exchange_row(call)
        end = "source" if call.request.url.path.endswith("/source") else "destination"
        return self.listed(call, [b for b in shapes.bindings_json(self.view.metadata, row["vhost"])
                                  if b[end] == row["name"] and (end == "source" or b["destination_type"] == "exchange")])

    async def queue_bindings(self, call: Call) -> Response:
        q = self.queue_record(call)
        return self.listed(call, [b for b in shapes.bindings_json(self.view.metadata, q.vhost)
                                  if b["destination"] == q.name and b["destination_type"] == "queue"])

    def binding_ends(self, call: Call) -> tuple[str, str, str, str]:
        """(vhost, source, destination kind, destination) of a /api/bindings/vhost/e/s/q|e/d path;
        404 when the vhost or either end is missing."""
        vhost = self.visible_vhosts(call, path_name(call.params["vhost"]))[0]
        source = exchange_name(call.params["source"])
        kind = "queue" if call.params["kind"] == "q" else "exchange"
        destination = path_name(call.params["destination"])
        meta = self.view.metadata
        if meta.exchange(vhost, source) is None:
            raise NOT_FOUND
        if (meta.queue(vhost, destination) if kind == "queue" else meta.exchange(vhost, destination)) is None:
            raise NOT_FOUND
        return vhost, source, kind, destination

    def bindings_between(self, call: Call) -> list[dict[str, Any]]:
        vhost, source, kind, destination = self.binding_ends(call)
        return [b for b in shapes.bindings_json(self.view.metadata, vhost)
                if b["source"] == source and b["destination"] == destination and b["destination_type"] == kind]

    async def bindings_of_pair(self, call: Call) -> Response:
        return self.listed(call, self.bindings_between(call))

    async def create_binding(self, call: Call) -> Response:
        vhost, source, kind, destination = self.binding_ends(call)
        body = await call.body()
        routing_key = str_field(body, "routing_key", "")
        arguments = object_field(body, "arguments")
        self.check_amqp(call, vhost, auth.checks_for_bind(vhost, source, auth.Kind(kind), destination))
        await self.propose(md.Bind(vhost, source, destination, kind, routing_key, arguments))
        key = shapes.properties_key(routing_key, arguments)
        location = f"{call.request.url.path}/{key}"
        return Response(status_code=201, headers={"Location": location})

    def binding(self, call: Call) -> dict[str, Any]:
        key = path_name(call.params["props"])
        found = _found(next((b for b in self.bindings_between(call) if b["properties_key"] == key), None))
        return found

    async def get_binding(self, call: Call) -> Response:
        return self.one(call, self.binding(call))

    async def delete_binding(self, call: Call) -> Response:
        b = self.binding(call)
        kind = b["destination_type"]
        vhost = b["vhost"]
        self.check_amqp(call, vhost, auth.checks_for_bind(vhost, b["source"], auth.Kind(kind), b["destination"]))
        record = next(r for r in self.view.metadata.bindings(vhost, b["source"], b["destination"])
                      if r.destination_kind == kind and r.routing_key == b["routing_key"]
                      and shapes.properties_key(r.routing_key, r.arguments or {}) == b["properties_key"])
        await self.propose(md.Unbind(vhost, record.source, record.destination, kind, record.routing_key,
                                     record.arguments))
        return no_content()

    # ------------------------------------------------------------------ vhosts

    async def vhost_items(self, names: list[str],
                          ranges: Mapping[str, SampleRange] | None = None) -> list[dict[str, Any]]:
        """The vhosts `names`, each with the lengths and counters of its queues, wherever led
        (and their charts, summed over its queues, when `ranges` asks)."""
        rows = await self.cluster.queue_rows(names, ranges)
        cluster_state = await self.cluster.vhost_cluster_state()
        items = []
        for name in names:
            record = self.view.metadata.vhost(name)
            if record is None:
                continue  # deleted while its queues were asked for
            mine = [r for r in rows if r["vhost"] == name]
            items.append(shapes.vhost_json(record, cluster_state,
                                           sum_counts([{k: r[k] for k in QUEUE_TOTALS} for r in mine]),
                                           sum_counts([self.queue_counts(r) for r in mine]),
                                           sum_rates([self.queue_rates(r) for r in mine]),
                                           self.charted(mine, ranges or {})))
        return items

    async def vhosts(self, call: Call) -> Response:
        return self.listed(call, await self.vhost_items(self.visible_vhosts(call, None), self.chart_ranges(call)))

    async def vhost(self, call: Call) -> Response:
        return self.one(call, _found(next(iter(await self.vhost_items(
            self.visible_vhosts(call, path_name(call.params["vhost"])), self.chart_ranges(call))), None)))

    async def put_vhost(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        name = path_name(call.params["vhost"])
        body = await call.body()
        description = str_field(body, "description", "")
        tags = tags_field(body.get("tags", ""))
        queue_type = body.get("default_queue_type")
        if queue_type is not None and queue_type not in ("classic", "quorum", "stream"):
            raise bad_request(f"'default_queue_type' must be classic, quorum or stream, got {json.dumps(queue_type)}")
        if self.view.metadata.vhost(name) is not None:
            return no_content()
        await self.propose(md.AddVhost(name, description, tags, queue_type))
        return created_or_updated(False)

    async def delete_vhost(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        name = path_name(call.params["vhost"])
        if self.view.metadata.vhost(name) is None:
            raise NOT_FOUND
        await self.propose(md.DeleteVhost(name))
        return no_content()

    async def vhost_permissions(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        vhost = self.visible_vhosts(call, path_name(call.params["vhost"]))[0]
        return self.listed(call, [shapes.permission_json(p) for p in self.view.metadata.permissions(vhost=vhost)])

    async def vhost_topic_permissions(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        vhost = self.visible_vhosts(call, path_name(call.params["vhost"]))[0]
        return self.listed(call, [shapes.topic_permission_json(p)
                                  for p in self.view.metadata.topic_permissions(vhost=vhost)])

    async def aliveness(self, call: Call) -> Response:
        vhost = path_name(call.params["vhost"])
        self.require_vhost_exists(vhost)
        _check(access.require_vhost(call.who, vhost))
        # As RabbitMQ's: declare the vhost's aliveness-test queue, publish to it, get it back.
        await self.propose(md.DeclareQueue(vhost, ALIVENESS_QUEUE, False, False, None, {}, self.view.node_name))
        view = self.view
        view.purge(vhost, ALIVENESS_QUEUE)
        view.publish(vhost, "", ALIVENESS_QUEUE, spec.BasicProperties(), b"test_message", None)
        got = view.get_messages(vhost, ALIVENESS_QUEUE, 1, "ack_requeue_false")
        if not got or got[0].message.body != b"test_message":
            return json_reply({"status": "failed", "reason": "the test message did not come back"}, 503)
        return json_reply({"status": "ok"})

    # ------------------------------------------------------------------ users

    async def users(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        return self.listed(call, [shapes.user_json(u) for u in self.view.metadata.users()])

    async def users_without_permissions(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        meta = self.view.metadata
        with_permissions = {p.user for p in meta.permissions()}
        return self.listed(call, [shapes.user_json(u) for u in meta.users() if u.name not in with_permissions])

    def user_record(self, call: Call) -> md.UserRecord:
        _check(access.require_admin(call.who))
        user = _found(self.view.metadata.user(path_name(call.params["user"])))
        return user

    async def user(self, call: Call) -> Response:
        return self.one(call, shapes.user_json(self.user_record(call)))

    async def put_user(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        name = path_name(call.params["user"])
        body = await call.body()
        if "tags" not in body:
            raise bad_request("tags_not_present")
        tags = tags_field(body["tags"])
        if "password_hash" in body:
            password_hash = str_field(body, "password_hash", "")
            algorithm = str_field(body, "hashing_algorithm", "rabbit_password_hashing_sha256")
            if not auth.is_known_hashing_algorithm(algorithm):
                raise bad_request(f"unknown 'hashing_algorithm' {json.dumps(algorithm)}")
            check_base64("password_hash", password_hash)
        elif "password" in body:
            password = str_field(body, "password", "")
            password_hash, algorithm = (auth.hash_password(password) if password else ""), \
                "rabbit_password_hashing_sha256"
        else:
            password_hash, algorithm = "", "rabbit_password_hashing_sha256"
        existing = self.view.metadata.user(name)
        if existing is None:
            await self.propose(md.AddUser(name, password_hash, algorithm, tags))
            return created_or_updated(False)
        if "password_hash" in body or "password" in body:
            await self.propose(md.ChangePassword(name, password_hash, algorithm))
        await self.propose(md.SetUserTags(name, tags))
        return no_content()

    async def delete_user(self, call: Call) -> Response:
        user = self.user_record(call)
        await self.propose(md.DeleteUser(user.name))
        return no_content()

    async def bulk_delete_users(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        body = await call.body()
        _check(missing_keys(body, "users"))
        names = body["users"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise bad_request("'users' must be a list of user names")
        for name in names:
            if self.view.metadata.user(name) is not None:
                await self.propose(md.DeleteUser(name))
        return no_content()

    async def user_permissions(self, call: Call) -> Response:
        user = self.user_record(call)
        return self.listed(call, [shapes.permission_json(p) for p in self.view.metadata.permissions(user=user.name)])

    async def user_topic_permissions(self, call: Call) -> Response:
        user = self.user_record(call)
        return self.listed(call, [shapes.topic_permission_json(p)
                                  for p in self.view.metadata.topic_permissions(user=user.name)])

    # ------------------------------------------------------------------ permissions

    async def permissions(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        return self.listed(call, [shapes.permission_json(p) for p in self.view.metadata.permissions()])

    def permission_target(self, call: Call) -> tuple[str, str]:
        _check(access.require_admin(call.who))
        vhost, user = path_name(call.params["vhost"]), path_name(call.params["user"])
        meta = self.view.metadata
        if meta.vhost(vhost) is None or meta.user(user) is None:
            raise NOT_FOUND
        return vhost, user

    async def permission(self, call: Call) -> Response:
        vhost, user = self.permission_target(call)
        p = _found(self.view.metadata.permission(vhost, user))
        return self.one(call, shapes.permission_json(p))

    async def put_permission(self, call: Call) -> Response:
        vhost, user = self.permission_target(call)
        body = await call.body()
        _check(missing_keys(body, "configure", "write", "read"))
        regexes = [str_field(body, key, "") for key in ("configure", "write", "read")]
        check_regexes(regexes)
        existed = self.view.metadata.permission(vhost, user) is not None
        await self.propose(md.SetPermissions(vhost, user, *regexes))
        return created_or_updated(existed)

    async def delete_permission(self, call: Call) -> Response:
        vhost, user = self.permission_target(call)
        if self.view.metadata.permission(vhost, user) is None:
            raise NOT_FOUND
        await self.propose(md.ClearPermissions(vhost, user))
        return no_content()

    async def topic_permissions(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        return self.listed(call, [shapes.topic_permission_json(p) for p in self.view.metadata.topic_permissions()])

    async def topic_permission(self, call: Call) -> Response:
        vhost, user = self.permission_target(call)
        found = self.view.metadata.topic_permissions(vhost=vhost, user=user)
        if not found:
            raise NOT_FOUND
        return self.listed(call, [shapes.topic_permission_json(p) for p in found])

    async def put_topic_permission(self, call: Call) -> Response:
        vhost, user = self.permission_target(call)
        body = await call.body()
        _check(missing_keys(body, "exchange", "write", "read"))
        regexes = [str_field(body, key, "") for key in ("write", "read")]
        check_regexes(regexes)
        exchange = str_field(body, "exchange", "")
        existed = bool(self.view.metadata.topic_permissions(vhost, user, exchange))
        await self.propose(md.SetTopicPermissions(vhost, user, exchange, *regexes))
        return created_or_updated(existed)

    async def delete_topic_permission(self, call: Call) -> Response:
        vhost, user = self.permission_target(call)
        if not self.view.metadata.topic_permissions(vhost=vhost, user=user):
            raise NOT_FOUND
        await self.propose(md.ClearTopicPermissions(vhost, user, None))
        return no_content()

    # ------------------------------------------------------------------ policies and parameters

    async def policies(self, call: Call) -> Response:
        if not call.who.is_policymaker and not call.who.is_monitor:
            raise not_authorised("Not policymaker user")
        vhosts = self.listing_vhosts(call)
        return self.listed(call, [shapes.policy_json(p) for v in vhosts for p in self.view.metadata.policies(v)])

    def policy_target(self, call: Call) -> tuple[str, str]:
        vhost, name = path_name(call.params["vhost"]), path_name(call.params["name"])
        _check(access.require_policymaker(call.who, vhost))
        if self.view.metadata.vhost(vhost) is None:
            raise NOT_FOUND
        return vhost, name

    async def policy(self, call: Call) -> Response:
        vhost, name = self.policy_target(call)
        p = _found(self.view.metadata.policy(vhost, name))
        return self.one(call, shapes.policy_json(p))

    async def put_policy(self, call: Call) -> Response:
        vhost, name = self.policy_target(call)
        body = await call.body()
        _check(missing_keys(body, "pattern", "definition"))
        pattern = str_field(body, "pattern", "")
        definition = object_field(body, "definition")
        apply_to = str_field(body, "apply-to", "all")
        priority = int_field(body, "priority", 0) or 0
        invalid = validate_policy(pattern, apply_to, definition)
        if invalid is not None:
            raise bad_request(f"Validation failed\n\n{invalid.text}\n")
        existed = self.view.metadata.policy(vhost, name) is not None
        await self.propose(md.SetPolicy(vhost, name, pattern, apply_to, definition, priority))
        return created_or_updated(existed)

    async def delete_policy(self, call: Call) -> Response:
        vhost, name = self.policy_target(call)
        if self.view.metadata.policy(vhost, name) is None:
            raise NOT_FOUND
        await self.propose(md.ClearPolicy(vhost, name))
        return no_content()

    async def parameters(self, call: Call) -> Response:
        # Leveret has no runtime parameter components (federation, shovel): nothing to list.
        if not call.who.is_policymaker and not call.who.is_monitor:
            raise not_authorised("Not policymaker user")
        return self.listed(call, [])

    async def parameter(self, call: Call) -> Response:
        raise NOT_FOUND

    async def put_parameter(self, call: Call) -> Response:
        component = path_name(call.params["component"])
        raise bad_request(f"Validation failed\n\ncomponent {component} not found\n")

    async def global_parameters(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        return self.listed(call, [])

    async def vhost_limits(self, call: Call) -> Response:
        return self.listed(call, [])

    # ------------------------------------------------------------------ definitions

    async def definitions(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        defs = self.view.definitions()
        vhost = call.params.get("vhost")
        if vhost is not None:
            vhost = self.visible_vhosts(call, path_name(vhost))[0]
            defs = {key: [item for item in defs[key] if item.get("vhost") == vhost]
                    for key in ("policies", "queues", "exchanges", "bindings", "parameters")}
            defs["rabbit_version"] = __version__
        return json_reply(defs)

    async def import_definitions(self, call: Call) -> Response:
        _check(access.require_admin(call.who))
        raw = await call.request.body()
        try:
            defs = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise bad_request("failed_to_parse_json") from None
        if not isinstance(defs, dict):
            raise bad_request("failed_to_parse_json")
        vhost = call.params.get("vhost")
        if vhost is not None:
            vhost = self.visible_vhosts(call, path_name(vhost))[0]
            # A vhost's definitions name no vhost: every object goes into the one in the path.
            defs = {key: [{**item, "vhost": vhost} for item in defs.get(key) or [] if isinstance(item, dict)]
                    for key in ("policies", "queues", "exchanges", "bindings")}
        try:
            commands = import_commands(defs, self.view.node_name, self.view.metadata)
        except (ValueError, TypeError, AttributeError) as exc:
            raise bad_request(f"Failed to import definitions: {exc}") from None
        for kind, cmd in commands:
            result = await self.view.propose(cmd)
            if isinstance(result, md.Refusal):
                raise bad_request(f"Failed to import definitions: {kind or 'users'}: {refusal_reason(result.text)}")
        return no_content()

    # ------------------------------------------------------------------ health checks

    async def check_alarms(self, call: Call) -> Response:
        alarms = sorted(self.view.alarms)
        if alarms:
            return json_reply({"status": "failed", "reason": "resource alarm(s) in effect in the cluster",
                               "alarms": [{"node": self.view.node_name, "resource": a} for a in alarms]}, 503)
        return json_reply({"status": "ok"})

    async def check_certificate_expiration(self, call: Call) -> Response:
        # No TLS listeners, so no certificate can expire.
        return json_reply({"status": "ok"})

    async def check_port_listener(self, call: Call) -> Response:
        text = call.params["port"]
        if not text.isdigit():
            raise bad_request(f"port must be a number, got {json.dumps(text)}")
        ports = sorted(p for _proto, _host, p in self.view.listeners)
        if int(text) in ports:
            return json_reply({"status": "ok", "port": int(text)})
        return json_reply({"status": "failed", "reason": "No active listener", "missing": int(text),
                           "ports": ports}, 503)

    async def check_protocol_listener(self, call: Call) -> Response:
        protocol = path_name(call.params["protocol"])
        protocols = sorted({proto for proto, _host, _port in self.view.listeners})
        if protocol in protocols:
            return json_reply({"status": "ok", "protocol": protocol})
        return json_reply({"status": "failed", "reason": "No active listener", "missing": protocol,
                           "protocols": protocols}, 503)

    async def check_virtual_hosts(self, call: Call) -> Response:
        return json_reply({"status": "ok"})

    async def check_single_node(self, call: Call) -> Response:
        # node-is-quorum-critical / node-is-mirror-sync-critical: nothing depends on a peer.
        return json_reply({"status": "ok", "reason": "single node cluster"})
