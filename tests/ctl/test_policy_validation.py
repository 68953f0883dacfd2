"""cluster.policy (pure): definitions checked with RabbitMQ 3.10.8's messages (taken from
`rabbitmqctl set_policy` against the reference node), and leveretctl's cell rendering."""

from __future__ import annotations

import pytest

from cli.ctl_format import cell, json_rows, table_lines, typed_table_cell
from cluster.policy import (
    PolicyInvalid,
    erlang_repr,
    parse_definition,
    pattern_problem,
    validate_definition,
    validate_policy,
)


@pytest.mark.parametrize("definition, text", [
    ({"message-ttl": "x"}, '<<"x">> is not a valid message TTL'),
    ({"message-ttl": -1}, "-1 is not a valid message TTL"),
    ({"expires": 0}, "0 is not a valid queue expiry"),
    ({"expires": "1"}, '<<"1">> is not a valid queue expiry'),
    ({"max-length": -1}, "-1 is not a valid maximum length"),
    ({"max-length": 1.5}, "1.5 is not a valid maximum length"),
    ({"max-length": True}, "true is not a valid maximum length"),
    ({"max-length-bytes": "1"}, '<<"1">> is not a valid maximum length in bytes'),
    ({"dead-letter-exchange": 1}, "1 is not a valid dead letter exchange name"),
    ({"dead-letter-routing-key": 1}, "1 is not a valid dead letter routing key"),
    ({"alternate-exchange": 1}, "1 is not a valid alternate exchange name"),
    ({"overflow": "x"}, '<<"x">> is not a valid overflow value'),
    ({"queue-mode": "x"}, '<<"x">> is not a valid queue-mode value'),
    ({"queue-master-locator": "x"}, '<<"x">> invalid queue-master-locator value'),
    ({"delivery-limit": -1}, "-1 is not a valid delivery limit"),
    ({"foo": 1}, '[{<<"foo">>,1}] are not recognised policy settings'),
    ({"max-length": 1, "foo": 1, "bar": 2}, '[{<<"bar">>,2},{<<"foo">>,1}] are not recognised policy settings'),
    ({"message-ttl": 1, "max-length": -1}, "-1 is not a valid maximum length"),
    ({}, "no policy provided"),
    ({"ha-mode": "bogus"}, '<<"bogus">> is not a valid ha-mode value'),
    ({"ha-mode": "exactly"}, 'ha-mode="exactly" takes an integer, none given'),
    ({"ha-mode": "exactly", "ha-params": "x"}, 'ha-mode="exactly" takes an integer, <<"x">> given'),
    ({"ha-mode": "exactly", "ha-params": 0}, 'ha-mode="exactly" takes an integer, 0 given'),
    ({"ha-mode": "nodes"}, 'ha-mode="nodes" takes a list, none given'),
    ({"ha-mode": "nodes", "ha-params": "x"}, 'ha-mode="nodes" takes a list, <<"x">> given'),
    ({"ha-mode": "nodes", "ha-params": []}, 'ha-mode="nodes" list must be non-empty'),
    ({"ha-mode": "all", "ha-params": 1}, 'ha-mode="all" does not take parameters'),
    ({"ha-mode": "all", "ha-sync-mode": "x"}, 'ha-sync-mode must be "manual" or "automatic", got <<"x">>'),
    ({"ha-sync-mode": "automatic"},
     "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown"),
    ({"ha-mode": "all", "ha-sync-batch-size": 0}, "ha-sync-batch-size takes an integer greater than 0, 0 given"),
    # Checked against RabbitMQ 3.10.8: every ha-* key wants ha-mode, whatever the text names.
    ({"ha-sync-batch-size": 5},
     "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown"),
    ({"ha-promote-on-failure": "always"},
     "ha-mode must be specified to specify ha-params, ha-sync-mode or ha-promote-on-shutdown"),
    ({"ha-mode": "nodes", "ha-params": [1]}, 'ha-mode="nodes" takes a list of strings, [1] was not a string'),
    ({"ha-mode": "nodes", "ha-params": ["a@h", ["b"]]},
     'ha-mode="nodes" takes a list of strings, [[<<"b">>]] was not a string'),
    ({"ha-mode": "all", "ha-promote-on-shutdown": "x"},
     'ha-promote-on-shutdown must be "always" or "when-synced", got <<"x">>'),
])
def test_invalid_definitions_get_rabbitmqs_message(definition: dict, text: str) -> None:
    assert validate_definition(definition) == PolicyInvalid(text)


@pytest.mark.parametrize("definition", [
    {"message-ttl": 0}, {"expires": 1}, {"max-length": 0}, {"overflow": "reject-publish-dlx"},
    {"dead-letter-exchange": "dlx", "dead-letter-routing-key": "k"}, {"alternate-exchange": "ae"},
    {"ha-mode": "all"}, {"ha-mode": "exactly", "ha-params": 2, "ha-sync-mode": "automatic"},
    {"ha-mode": "nodes", "ha-params": ["a@h", "b@h"]}, {"queue-mode": "lazy", "max-length-bytes": 10},
])
def test_valid_definitions(definition: dict) -> None:
    assert validate_definition(definition) is None
    assert validate_policy("^q", "queues", definition) is None


def test_parse_definition() -> None:
    assert parse_definition('{"max-length": 5}') == {"max-length": 5}
    bad = parse_definition("{bad json")
    assert isinstance(bad, PolicyInvalid) and not bad.validation
    assert bad.message().startswith("JSON decoding error. Reason: ")
    not_object = parse_definition("[1,2]")
    assert isinstance(not_object, PolicyInvalid)
    assert not_object.message() == "Validation failed\n\nthe definition must be a JSON object, got [1,2]\n"


def test_every_failing_part_is_reported_like_rabbitmq() -> None:
    invalid = validate_policy("(", "bogus", {"foo": 1})
    assert invalid is not None
    assert invalid.message() == (
        "Validation failed\n\n"
        '[{<<"foo">>,1}] are not recognised policy settings\n'
        "apply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'\n"
        'pattern should be regular expression but is invalid: {"missing )",1}\n')


def test_pattern_errors_in_pcre_words() -> None:
    assert pattern_problem("^ok.*") is None
    assert pattern_problem("[a") == ('pattern should be regular expression but is invalid: '
                                     '{"missing terminating ] for character class",2}')
    assert pattern_problem("a**") == 'pattern should be regular expression but is invalid: {"nothing to repeat",2}'


def test_erlang_repr() -> None:
    assert erlang_repr("x") == '<<"x">>'
    assert erlang_repr([1, "a", None, False]) == '[1,<<"a">>,null,false]'


def test_cells_and_json_like_rabbitmqctl() -> None:
    assert cell("durable", True) == "true"
    assert cell("tags", ["administrator", "monitoring"]) == "[administrator, monitoring]"
    assert cell("arguments", [["x-max-length", "signedint", 10], ["x-dead-letter-exchange", "longstr", "dlx"]]) \
        == '[{"x-max-length",10},{"x-dead-letter-exchange","dlx"}]'
    assert typed_table_cell([["caps", "table", [["a", "bool", True]]]]) == '[{"caps",[{"a",true}]}]'
    assert cell("cluster_state", {"n@h": "running"}) == "[{n@h, running}]"
    assert cell("policy", None) == ""
    assert table_lines([], ["name"], True) == []
    assert table_lines([{"name": "q", "messages": 1}], ["name", "messages"], True) == ["name\tmessages", "q\t1"]
    assert json_rows([], ["name"]) == "[]"
    assert json_rows([{"name": "a"}, {"name": "b"}], ["name"]) == '[\n{"name":"a"}\n,{"name":"b"}\n]'
