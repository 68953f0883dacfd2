"""Vhost, resource and topic permissions with RabbitMQ's regex semantics and refusal texts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from broker import auth
from broker.auth import Access, Kind, Resource


@dataclass
class Permission:  # cluster/metadata.py's Permission shape
    vhost: str
    user: str
    configure: str
    write: str
    read: str


@dataclass
class TopicPermission:
    vhost: str
    user: str
    exchange: str
    write: str
    read: str


ALL = Permission("/", "u", ".*", ".*", ".*")
NONE = Permission("/", "u", "^$", "^$", "^$")


def q(name: str, vhost: str = "/") -> Resource:
    return Resource(vhost, Kind.QUEUE, name)


def x(name: str, vhost: str = "/") -> Resource:
    return Resource(vhost, Kind.EXCHANGE, name)


def test_dot_star_grants_everything_caret_dollar_nothing() -> None:
    for access in Access:
        assert auth.check_resource_access("u", ALL, q("anything"), access) is None
        assert auth.check_resource_access("u", NONE, q("anything"), access) is not None


def test_empty_permission_is_a_synonym_for_caret_dollar() -> None:
    p = Permission("/", "u", "", "", "")
    assert auth.check_resource_access("u", p, q("a"), Access.READ) is not None


def test_regex_is_unanchored_like_re_run() -> None:
    p = Permission("/", "u", "orders", "^app\\.", "log$")
    assert auth.check_resource_access("u", p, q("my-orders-queue"), Access.CONFIGURE) is None
    assert auth.check_resource_access("u", p, q("app.x"), Access.WRITE) is None
    assert auth.check_resource_access("u", p, q("myapp.x"), Access.WRITE) is not None
    assert auth.check_resource_access("u", p, q("audit-log"), Access.READ) is None
    assert auth.check_resource_access("u", p, q("log-audit"), Access.READ) is not None


def test_invalid_regex_grants_nothing_and_is_reported_for_storage() -> None:
    p = Permission("/", "u", "(", "(", "(")
    assert auth.check_resource_access("u", p, q("("), Access.READ) is not None
    assert auth.permission_regex_error("(") is not None
    assert auth.permission_regex_error("^amq\\.gen.*") is None


def test_no_permission_record_refuses() -> None:
    r = auth.check_resource_access("u", None, q("a"), Access.READ)
    assert r == auth.AccessRefused(403, "ACCESS_REFUSED - access to queue 'a' in vhost '/' refused for user 'u'")


def test_refusal_text_for_exchange() -> None:
    r = auth.check_resource_access("bob", NONE, x("logs", "prod"), Access.WRITE)
    assert r is not None and r.reply_code == 403
    assert r.reply_text == "ACCESS_REFUSED - access to exchange 'logs' in vhost 'prod' refused for user 'bob'"


def test_default_exchange_is_checked_as_amq_default() -> None:
    only_default = Permission("/", "u", "^$", "^amq\\.default$", "^$")
    assert auth.check_resource_access("u", only_default, x(""), Access.WRITE) is None
    empty_only = Permission("/", "u", "^$", "^$", "^$")
    r = auth.check_resource_access("u", empty_only, x(""), Access.WRITE)
    assert r is not None
    assert r.reply_text == "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'u'"
    # only exchanges are renamed; a queue named "" is not
    assert auth.check_resource_access("u", empty_only, q(""), Access.WRITE) is None


def test_regex_compiled_once() -> None:
    auth._compiled.cache_clear()
    for _ in range(50):
        auth.regex_grants("^perf-.*", "perf-1")
    info = auth._compiled.cache_info()
    assert info.misses == 1 and info.hits == 49


def test_vhost_access() -> None:
    assert auth.check_vhost_access("u", "/", vhost_exists=True, permission=ALL) is None
    refused = auth.AccessRefused(530, "NOT_ALLOWED - access to vhost 'v' refused for user 'u'")
    assert auth.check_vhost_access("u", "v", vhost_exists=True, permission=None) == refused
    assert auth.check_vhost_access("u", "v", vhost_exists=False, permission=ALL) == refused
    # a record granting nothing still opens the vhost, as in RabbitMQ
    assert auth.check_vhost_access("u", "/", vhost_exists=True, permission=NONE) is None


# The access control table ("How Permissions Work"), as rabbit_channel implements it.
W, R, C = Access.WRITE, Access.READ, Access.CONFIGURE


@pytest.mark.parametrize(
    ("checks", "expected"),
    [
        (auth.checks_for_publish("/", "ex"), [(x("ex"), W)]),
        (auth.checks_for_publish("/", ""), [(x(""), W)]),
        (auth.checks_for_consume("/", "q"), [(q("q"), R)]),
        (auth.checks_for_get("/", "q"), [(q("q"), R)]),
        (auth.checks_for_queue_purge("/", "q"), [(q("q"), R)]),
        (auth.checks_for_queue_delete("/", "q"), [(q("q"), C)]),
        (auth.checks_for_exchange_delete("/", "ex"), [(x("ex"), C)]),
        (auth.checks_for_queue_declare("/", "q", passive=True, creates=False), []),
        (auth.checks_for_queue_declare("/", "q", passive=False, creates=False, dead_letter_exchange="dlx"), [(q("q"), C)]),
        (
            auth.checks_for_queue_declare("/", "q", passive=False, creates=True, dead_letter_exchange="dlx"),
            [(q("q"), C), (q("q"), R), (x("dlx"), W)],
        ),
        (auth.checks_for_queue_declare("/", "q", passive=False, creates=True), [(q("q"), C)]),
        (auth.checks_for_exchange_declare("/", "ex", passive=True, creates=False), []),
        (
            auth.checks_for_exchange_declare("/", "ex", passive=False, creates=True, alternate_exchange="ae"),
            [(x("ex"), C), (x("ex"), R), (x("ae"), W)],
        ),
        (auth.checks_for_bind("/", "src", Kind.QUEUE, "q"), [(q("q"), W), (x("src"), R)]),
        (auth.checks_for_bind("/", "src", Kind.EXCHANGE, "dst"), [(x("dst"), W), (x("src"), R)]),
        (auth.checks_for_unbind("/", "src", Kind.QUEUE, "q"), [(q("q"), W), (x("src"), R)]),
    ],
)
def test_operation_table(checks: tuple[auth.Check, ...], expected: list[tuple[Resource, Access]]) -> None:
    assert [(c.resource, c.access) for c in checks] == expected


def test_bind_refusal_reports_destination_write_first() -> None:
    p = Permission("/", "u", "^$", "^$", "^$")
    r = auth.check_all("u", p, auth.checks_for_bind("/", "src", Kind.QUEUE, "q"))
    assert r is not None and r.reply_text == "ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'u'"
    p2 = Permission("/", "u", "^$", "^q$", "^$")
    r2 = auth.check_all("u", p2, auth.checks_for_bind("/", "src", Kind.QUEUE, "q"))
    assert r2 is not None and r2.reply_text == (
        "ACCESS_REFUSED - access to exchange 'src' in vhost '/' refused for user 'u'"
    )
    p3 = Permission("/", "u", "^$", "^q$", "^src$")
    assert auth.check_all("u", p3, auth.checks_for_bind("/", "src", Kind.QUEUE, "q")) is None


def test_declare_with_dlx_needs_write_on_dlx() -> None:
    p = Permission("/", "u", ".*", "^$", ".*")
    checks = auth.checks_for_queue_declare("/", "q", passive=False, creates=True, dead_letter_exchange="dlx")
    r = auth.check_all("u", p, checks)
    assert r is not None and "access to exchange 'dlx'" in r.reply_text


def test_default_exchange_operations_refused_outright() -> None:
    r = auth.default_exchange_refusal("")
    assert r == auth.AccessRefused(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
    assert auth.default_exchange_refusal("amq.direct") is None


# Topic permissions


def test_topic_without_record_allows_everything() -> None:
    assert (
        auth.check_topic_access(
            "u", None, vhost="/", exchange="t", exchange_type="topic", routing_key="a.b", access=W
        )
        is None
    )


def test_topic_checks_only_apply_to_topic_exchanges() -> None:
    tp = TopicPermission("/", "u", "t", "^$", "^$")
    assert auth.check_topic_access("u", tp, vhost="/", exchange="t", exchange_type="direct", routing_key="k", access=W) is None
    assert auth.check_topic_access("u", tp, vhost="/", exchange="t", exchange_type="topic", routing_key="k", access=W)


def test_topic_variable_expansion() -> None:
    tp = TopicPermission("/", "alice", "t", "^{username}\\.", "^{vhost}\\.{client_id}$")
    kw = dict(vhost="prod", exchange="t", exchange_type="topic")
    assert auth.check_topic_access("alice", tp, routing_key="alice.orders", access=W, **kw) is None
    assert auth.check_topic_access("alice", tp, routing_key="bob.orders", access=W, **kw) is not None
    ctx = {"client_id": "sensor7"}
    assert auth.check_topic_access("alice", tp, routing_key="prod.sensor7", access=R, context=ctx, **kw) is None
    assert auth.check_topic_access("alice", tp, routing_key="prod.sensor8", access=R, context=ctx, **kw) is not None


def test_expansion_is_plain_text_and_context_cannot_override_username() -> None:
    assert auth.expand_topic_permission("^{username}$", {"username": "a.b"}) == "^a.b$"
    assert auth.topic_variables("real", "/", {"username": "spoofed", "client_id": "c"}) == {
        "username": "real",
        "vhost": "/",
        "client_id": "c",
    }


def test_topic_refusal_text() -> None:
    tp = TopicPermission("/", "u", "t", "^allowed$", "^$")
    r = auth.check_topic_access("u", tp, vhost="/", exchange="t", exchange_type="topic", routing_key="k.x", access=W)
    assert r == auth.AccessRefused(
        403, "ACCESS_REFUSED - access to topic 'k.x' in exchange 't' in vhost '/' refused for user 'u'"
    )


def test_publish_checks_every_routing_key() -> None:
    tp = TopicPermission("/", "u", "t", "^ok\\.", ".*")
    kw = dict(vhost="/", exchange="t", exchange_type="topic")
    assert auth.check_publish_topics("u", tp, routing_keys=["ok.1", "ok.2"], **kw) is None
    r = auth.check_publish_topics("u", tp, routing_keys=["ok.1", "cc.bad"], **kw)
    assert r is not None and "topic 'cc.bad'" in r.reply_text


def test_works_with_the_metadata_records() -> None:
    from cluster import metadata

    user = metadata.UserRecord("ops", auth.hash_password("pw"), tags=("management",))
    out = auth.authenticate(user, "ops", "pw", mechanism="PLAIN", local_address="::1", loopback_users=["guest"])
    assert out == auth.Authenticated("ops", ("management",))
    perm = metadata.Permission("/", "ops", "^ops\\.", ".*", "^$")
    assert auth.check_all("ops", perm, auth.checks_for_queue_declare("/", "ops.q", passive=False, creates=True)) is None
    assert auth.check_all("ops", perm, auth.checks_for_consume("/", "ops.q")) is not None
    tp = metadata.TopicPermission("/", "ops", "events", "^{username}\\.", ".*")
    assert auth.check_publish_topics(
        "ops", tp, vhost="/", exchange="events", exchange_type="topic", routing_keys=["ops.created"]
    ) is None
