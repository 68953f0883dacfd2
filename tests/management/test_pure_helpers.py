"""The management package's pure helpers: list queries, rates, credentials and tag rules,
body fields, binding keys, Prometheus rendering (checked with prometheus_client's parser), the
latency histogram, partitions from the members' reports, the members' client rows joined."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from broker.management import access
from broker.management.errors import ApiError
from broker.management.listing import ListQuery, apply_list_query, parse_list_query, select_columns
from broker.management.prometheus import MetricFamily, _histogram, render
from broker.cluster_clients import merge
from broker.management.rates import RateSamples, sum_rates, with_details
from broker.management.requests import bool_field, int_field, object_field, parse_body, refusal_reason, tags_field
from broker.management.shapes import node_json, properties_key
from cluster.partitions import partitions
from storage.latency import LatencyHistogram

ITEMS = [{"name": n, "messages": m, "message_stats": {"publish": p}}
         for n, m, p in (("b", 2, 20), ("a", 3, 10), ("c", 1, 30))]


def test_list_query_defaults_and_refusals() -> None:
    assert parse_list_query({}) == ListQuery()
    assert parse_list_query({"columns": "name,messages", "sort": "name", "sort_reverse": "true"}) == ListQuery(
        sort="name", sort_reverse=True, columns=("name", "messages"))
    assert parse_list_query({"page": "2", "page_size": "10", "name": "x", "use_regex": "true"}) == ListQuery(
        2, 10, "x", True)
    for params in ({"page": "0"}, {"page": "1", "page_size": "501"}, {"page": "one"}, {"page": "1", "page_size": "0"}):
        refusal = parse_list_query(params)
        assert isinstance(refusal, ApiError) and refusal.error == "invalid_pagination_parameters", params
    assert isinstance(parse_list_query({"page": "1", "name": "[", "use_regex": "true"}), ApiError)


def test_sorting_and_columns() -> None:
    by_name = apply_list_query(ITEMS, ListQuery(sort="name"))
    assert [i["name"] for i in by_name] == ["a", "b", "c"]  # type: ignore[index]
    by_stat = apply_list_query(ITEMS, ListQuery(sort="message_stats.publish", sort_reverse=True,
                                                columns=("name", "message_stats.publish")))
    assert by_stat == [{"name": "c", "message_stats": {"publish": 30}}, {"name": "b", "message_stats": {"publish": 20}},
                       {"name": "a", "message_stats": {"publish": 10}}]
    assert select_columns(ITEMS[0], ("name", "absent", "message_stats.absent")) == {"name": "b"}


def test_pages_count_the_filtered_items() -> None:
    page = apply_list_query(ITEMS, ListQuery(page=1, page_size=2, name="[ab]", use_regex=True, sort="name"))
    assert page == {"filtered_count": 2, "item_count": 2, "items": [ITEMS[1], ITEMS[0]], "page": 1, "page_count": 1,
                    "page_size": 2, "total_count": 3}
    out_of_range = apply_list_query(ITEMS, ListQuery(page=3, page_size=2))
    assert isinstance(out_of_range, ApiError) and out_of_range.reason == "Page out of range, page: 3 page size: 2, len: 3"
    # An empty list still has one (empty) page, as RabbitMQ answers it.
    assert apply_list_query([], ListQuery(page=1))["page_count"] == 1  # type: ignore[index]


@given(st.lists(st.integers(0, 50), max_size=40), st.integers(1, 7))
def test_pages_partition_the_items(values: list[int], page_size: int) -> None:
    items = [{"name": f"q{i}", "v": v} for i, v in enumerate(values)]
    pages = []
    page = 1
    while True:
        answer = apply_list_query(items, ListQuery(page=page, page_size=page_size, sort="v"))
        if isinstance(answer, ApiError):
            break
        pages.append(answer)
        page += 1
    assert pages and all(p["page_count"] == len(pages) for p in pages)
    seen = [i for p in pages for i in p["items"]]
    assert seen == sorted(items, key=lambda i: i["v"])


def test_rates_are_the_change_between_the_last_two_samples() -> None:
    rates = RateSamples()
    rates.record(100.0, {"q": {"publish": 10}})
    assert rates.rate("q", "publish") == 0.0  # one sample: no rate yet
    rates.record(105.0, {"q": {"publish": 60}})
    assert rates.rate("q", "publish") == 10.0
    rates.record(110.0, {"q": {"publish": 60}})
    assert rates.rate("q", "publish") == 0.0
    assert rates.rates("q") == {"publish": 0.0}
    rates.record(115.0, {"q": {"publish": 61, "messages": 4}})
    assert rates.rates("q") == {"publish": 0.2, "messages": 0.0} and rates.rates("other") == {}
    rates.record(120.0, {})  # the queue is gone: forgotten
    assert rates.rate("q", "publish") == 0.0 and rates.rates("q") == {}


def test_details_take_the_rates_given_and_sums_add_them() -> None:
    assert with_details({"publish": 60, "ack": 1}, {"publish": 2.5}, ("publish", "get", "ack")) == {
        "publish": 60, "publish_details": {"rate": 2.5}, "ack": 1, "ack_details": {"rate": 0.0}}
    assert sum_rates([{"publish": 0.1, "ack": 1.0}, {"publish": 0.2}, {}]) == {"publish": 0.3, "ack": 1.0}
    assert sum_rates([]) == {}


def _channel(connection: str, number: int, **items: object) -> dict:
    return {"connection": connection, "number": number, "pid": f"{connection[:-1]}.{number}>",
            "connection_name": f"name of {connection}", "peer_host": "10.0.0.9", "peer_port": 4000,
            "user": "bob", "prefetch_count": 7, "vhost": "/", **items}


def test_members_clients_merge_with_their_nodes_and_proxied_consumers_joined() -> None:
    """A consumer led on b whose connection is on c takes c's channel items and node c; one
    whose connection's node did not answer is left out; rows of b's own connections stay b's."""
    b_consumer = {"queue_name": "q", "vhost": "/", "channel_number": 1, "consumer_tag": "t1", "node": "b",
                  "connection": "<b.1>", "connection_name": "b's", "channel_pid": "<b.1.1>", "user": "al",
                  "peer_host": "h", "peer_port": 1, "prefetch_count": 0}
    proxied = {"queue_name": "q", "vhost": "/", "channel_number": 2, "consumer_tag": "t2", "node": "c",
               "connection": "<c.4>"}
    orphan = {**proxied, "consumer_tag": "t3", "node": "d", "connection": "<d.1>"}
    answers = {
        "b": {"connections": [{"name": "b's", "user": "al"}], "channels": [_channel("<b.1>", 1)],
              "consumers": [b_consumer, proxied, orphan]},
        "c": {"connections": [{"name": "c's", "user": "bob"}], "channels": [_channel("<c.4>", 2)],
              "consumers": []},
    }
    merged = merge(answers)
    assert [(r["name"], r["node"]) for r in merged.connections] == [("b's", "b"), ("c's", "c")]
    assert [(r["connection"], r["node"]) for r in merged.channels] == [("<b.1>", "b"), ("<c.4>", "c")]
    assert [r["consumer_tag"] for r in merged.consumers] == ["t1", "t2"]
    own, joined = merged.consumers
    assert own == {**b_consumer, "node": "b"}
    assert joined == {**proxied, "node": "c", "channel_pid": "<c.4.2>", "connection_name": "name of <c.4>",
                      "peer_host": "10.0.0.9", "peer_port": 4000, "user": "bob", "prefetch_count": 7}
    # A channel with the same number on another connection is not the consumer's.
    assert merge({"b": answers["b"], "c": {**answers["c"], "channels": [_channel("<c.5>", 2)]}}).consumers == [
        {**b_consumer, "node": "b"}]


def test_basic_credentials() -> None:
    token = base64.b64encode(b"user:pa:ss").decode()
    assert access.basic_credentials(f"Basic {token}") == ("user", "pa:ss")
    assert access.basic_credentials(f"basic {token}") == ("user", "pa:ss")
    for header in (None, "", "Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        assert access.basic_credentials(header) is None, header


def test_tag_rules() -> None:
    assert access.require_management(()) is not None
    assert access.require_management(("impersonator",)) is not None
    for tag in ("management", "policymaker", "monitoring", "administrator"):
        assert access.require_management((tag,)) is None
    manager = access.Principal("m", frozenset({"management"}), frozenset({"v"}))
    monitor = access.Principal("o", frozenset({"monitoring"}), frozenset())
    assert manager.sees_vhost("v") and not manager.sees_vhost("w") and monitor.sees_vhost("w")
    assert manager.sees_user_objects("m") and not manager.sees_user_objects("o") and monitor.sees_user_objects("m")
    assert access.require_vhost(manager, "v") is None and access.require_vhost(manager, "w") is not None
    assert access.require_policymaker(manager, "v") is not None
    assert access.require_admin(monitor) is not None and access.require_monitor(monitor) is None


def test_body_fields() -> None:
    assert parse_body(b"") == {} and parse_body(b' {"a": 1} ') == {"a": 1}
    assert isinstance(parse_body(b"{"), ApiError) and isinstance(parse_body(b"[]"), ApiError)
    assert bool_field({"d": "true"}, "d", False) is True and bool_field({}, "d", True) is True
    assert int_field({"n": "5"}, "n", 1) == 5 and int_field({}, "n", None) is None
    assert object_field({"a": []}, "a") == {} and tags_field("a, b,") == ("a", "b") and tags_field(["x"]) == ("x",)
    for call in (lambda: bool_field({"d": 1}, "d", False), lambda: int_field({"n": True}, "n", 0),
                 lambda: object_field({"a": [1]}, "a"), lambda: tags_field(3)):
        with pytest.raises(ApiError) as refused:
            call()
        assert refused.value.status == 400
    assert refusal_reason("PRECONDITION_FAILED - inequivalent arg") == "inequivalent arg"
    assert refusal_reason("no dash here") == "no dash here"


def test_binding_properties_keys() -> None:
    assert properties_key("rk", {}) == "rk"
    assert properties_key("rk", {"a": 1}) == properties_key("rk", {"a": 1}) != properties_key("rk", {"a": 2})
    assert properties_key("rk", {"a": 1}).startswith("rk~")


def test_rendered_metrics_parse_back() -> None:
    families = [
        MetricFamily("leveret_things", "gauge", "Things").add(3, (("vhost", '/"odd"\\\n'), ("queue", "q"))),
        MetricFamily("leveret_done_total", "counter", "Done").add(7),
        MetricFamily("leveret_ratio", "gauge", "A ratio").add(0.25),
    ]
    parsed = {f.name: f for f in text_string_to_metric_families(render(families))}
    assert parsed["leveret_things"].samples[0].labels == {"vhost": '/"odd"\\\n', "queue": "q"}
    assert parsed["leveret_done"].type == "counter" and parsed["leveret_done"].samples[0].value == 7
    assert parsed["leveret_ratio"].samples[0].value == 0.25


def test_a_histogram_renders_as_prometheus_reads_one() -> None:

    h = LatencyHistogram((0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.002, 3.0):
        h.observe(seconds)
    parsed = {f.name: f for f in text_string_to_metric_families(
        render([_histogram("leveret_fsync_seconds", "Fsyncs", h.snapshot())]))}
    family = parsed["leveret_fsync_seconds"]
    assert family.type == "histogram"
    by_name = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    # Cumulative, a value equal to a bound counted in that bound's bucket.
    assert by_name[("leveret_fsync_seconds_bucket", "0.001")] == 2
    assert by_name[("leveret_fsync_seconds_bucket", "0.01")] == 3
    assert by_name[("leveret_fsync_seconds_bucket", "+Inf")] == 4 == by_name[("leveret_fsync_seconds_count", None)]
    assert by_name[("leveret_fsync_seconds_sum", None)] == pytest.approx(3.0035)


@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False), max_size=30))
def test_histogram_snapshots_are_cumulative_and_complete(values: list[float]) -> None:

    h = LatencyHistogram()
    for v in values:
        h.observe(v)
    snap = h.snapshot()
    assert snap.count == len(values) == snap.cumulative[-1]
    assert list(snap.cumulative) == sorted(snap.cumulative)
    for bound, count in zip(snap.bounds, snap.cumulative):
        assert count == sum(1 for v in values if v <= bound)


def test_partitions_are_running_members_a_member_does_not_reach() -> None:

    members = ["a", "b", "c"]
    # Everyone reaches everyone: no partition.
    assert partitions(members, {"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"]}) == {"a": [], "b": [], "c": []}
    # c is down (nobody reaches it, it does not answer): down, not partitioned.
    assert partitions(members, {"a": ["b"], "b": ["a"]}) == {"a": [], "b": []}
    # a and c cannot reach each other; b reaches both and says so: a partition between a and c.
    assert partitions(members, {"a": ["b"], "b": ["a", "c"]}) == {"a": ["c"], "b": []}
    assert partitions(members, {"a": ["b"], "b": ["a", "c"], "c": ["b"]}) == {"a": ["c"], "b": [], "c": ["a"]}


def test_a_member_that_does_not_answer_has_rabbitmqs_down_shape() -> None:

    assert node_json("x@h", None, 0, []) == {"name": "x@h", "type": "disc", "running": False, "cluster_links": []}
