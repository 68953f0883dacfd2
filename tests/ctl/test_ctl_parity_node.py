"""leveretctl against a real node, pinned to what rabbitmqctl 3.10.8 printed for the same
commands (its node name read as this node's, "rabbitmqctl" as "leveretctl"). One node for
the module; each test uses names of its own."""

from __future__ import annotations

import json

import pika
import pika.exceptions
import pytest

from tests.ctl.support import connect, ctl, ok
from tests.support.node_process import NodeProcess


@pytest.fixture(scope="module")
def node():
    with NodeProcess(name="parity@localhost").start() as proc:
        yield proc


def test_json_formatter_results_of_commands_that_change_something(node: NodeProcess) -> None:
    done = f'{{"node":"{node.name}","result":"ok"}}\n'
    steps = [
        ("add_vhost", "jv"), ("set_user_tags", "guest", "administrator"),
        ("set_permissions", "-p", "jv", "guest", ".*", ".*", ".*"), ("clear_permissions", "-p", "jv", "guest"),
        ("set_topic_permissions", "-p", "jv", "guest", "amq.topic", ".*", ".*"),
        ("clear_topic_permissions", "-p", "jv", "guest"),
        ("set_policy", "-p", "jv", "jp", "^x", '{"max-length":1}'), ("clear_policy", "-p", "jv", "jp"),
        ("delete_vhost", "jv"),
    ]
    for step in steps:
        assert ok(node, *step, "--formatter", "json").out == done, step
    r = ok(node, "add_user", "ju", "pw", "--formatter", "json")
    assert r.out == ('{"message":"Done. Don\'t forget to grant the user permissions to some virtual hosts! See '
                     f'\'leveretctl help set_permissions\' to learn more.","node":"{node.name}","status":"ok"}}\n')
    for step in (("change_password", "ju", "pw2"), ("clear_password", "ju"), ("delete_user", "ju")):
        assert ok(node, *step, "--formatter", "json").out == done, step
    assert ok(node, "ping", "--formatter", "json").out == '{"message":"Ping succeeded"}\n'
    ok(node, "add_user", "ju2", "pw")
    assert ok(node, "authenticate_user", "ju2", "pw", "--formatter", "json").out == '{"message":"Success"}\n'
    r = ok(node, "close_all_connections", "-p", "/", "bye", "--formatter", "json")
    assert r.out == f'{{"node":"{node.name}","result":"ok","value":"Closed 0 connections"}}\n'


def test_json_formatter_errors_for_unknown_or_existing_users(node: NodeProcess) -> None:
    def refused(*args: str) -> tuple[str, str, int]:
        r = ctl(node, *args, "--formatter", "json")
        return r.out, r.err, r.code

    def error(message: str) -> tuple[str, str, int]:
        return "", f'{{"message":"{message}","node":"{node.name}","result":"error"}}\n', 69

    ok(node, "add_user", "jerr", "pw")
    assert refused("add_user", "jerr", "x") == error("User jerr already exists")
    for args in (("delete_user", "nobody"), ("change_password", "nobody", "x"), ("set_user_tags", "nobody", "a")):
        assert refused(*args) == error("User nobody does not exists"), args
    assert refused("set_permissions", "nobody", ".*", ".*", ".*") == error("User nobody does not exist")
    assert refused("set_permissions", "-p", "nosuch", "jerr", ".*", ".*", ".*") == \
        error("Virtual host nosuch does not exist")
    assert refused("clear_permissions", "nobody") == error("User nobody does not exist")
    assert refused("set_topic_permissions", "nobody", "amq.topic", ".*", ".*") == error("User nobody does not exist")
    # Refusals the JSON formatter leaves as they are.
    assert refused("clear_password", "nobody") == ("", 'Error:\n{:no_such_user, "nobody"}\n', 69)
    assert refused("delete_vhost", "nosuch") == ("", "Virtual host 'nosuch' does not exist\n", 65)
    # The table formatter keeps its own texts and codes.
    r = ctl(node, "delete_user", "nobody")
    assert (r.err, r.code) == ('Error:\nUser "nobody" does not exist\n', 67)


def test_user_refusals(node: NodeProcess) -> None:
    r = ctl(node, "clear_password", "nobody")
    assert (r.out, r.err, r.code) == ('Clearing password for user "nobody" ...\n',
                                      'Error:\n{:no_such_user, "nobody"}\n', 69)
    ok(node, "add_user", "blank", "pw")
    blank = ("attempted to log in with a blank password, which is prohibited by the internal authN backend. "
             "To use TLS/x509 certificate-based authentication, see the rabbitmq_auth_mechanism_ssl plugin and "
             "configure the client to use the EXTERNAL authentication mechanism. Alternatively change the "
             "password for the user to be non-blank.")
    for user in ("blank", "nobody"):
        r = ctl(node, "authenticate_user", user, "")
        assert (r.err, r.code) == (f'Error:\nError: failed to authenticate user "{user}"\nuser \'{user}\' {blank}\n',
                                   65)


def test_passwords_from_stdin(node: NodeProcess) -> None:
    r = ctl(node, "add_user", "stdin-user", stdin="s3cret\n")
    assert (r.out, r.err, r.code) == (
        'Adding user "stdin-user" ...\nPassword: \nDone. Don\'t forget to grant the user permissions to some '
        "virtual hosts! See 'leveretctl help set_permissions' to learn more.\n", "", 0)
    r = ctl(node, "authenticate_user", "stdin-user", stdin="s3cret\nother\n")
    assert (r.out, r.code) == ('Authenticating user "stdin-user" ...\nPassword: \nSuccess\n', 0)
    assert ctl(node, "-q", "change_password", "stdin-user", stdin="n3w\n").out == ""
    assert ok(node, "authenticate_user", "stdin-user", "n3w").code == 0


def test_vhost_and_policy_refusals(node: NodeProcess) -> None:
    r = ctl(node, "add_vhost", "badtype", "--default-queue-type", "bogus")
    assert (r.out, r.err, r.code) == ('Adding vhost "badtype" ...\n', "Error:\ninvalid_queue_type\n", 69)
    assert "badtype" not in ok(node, "-s", "list_vhosts").lines
    ok(node, "add_vhost", "streamy", "--default-queue-type", "stream")
    for bad in ("{bad", '{"a":', "notjson", ""):
        r = ctl(node, "set_policy", "p", "x", bad)
        assert (r.err, r.code) == ("Error:\nJSON decoding error. Reason: badarg\n", 69), bad


def test_empty_listings(node: NodeProcess) -> None:
    ok(node, "add_vhost", "empty")
    # Non-streaming commands print an empty line for no rows, even with -q and -s.
    for command in ("list_permissions", "list_policies", "list_topic_permissions"):
        r = ok(node, command, "-p", "empty")
        assert r.out.endswith(' for vhost "empty" ...\n\n'), command
        assert ok(node, "-s", command, "-p", "empty").out == "\n"
        assert ok(node, command, "-p", "empty", "--formatter", "json").out == "[]\n"
    # Streaming ones print nothing, and "[\n]" in JSON.
    assert ok(node, "list_queues", "-p", "empty").out == "Timeout: 60.0 seconds ...\nListing queues for vhost empty ...\n"
    assert ok(node, "list_queues", "-p", "empty", "--formatter", "json").out == "[\n]\n"
    assert ok(node, "list_queues", "-p", "empty", "--formatter", "csv").out == ""
    # rabbitmqctl 3.10.8 list_permissions --formatter csv for no rows: "\r\n\r\n\n".
    assert ok(node, "list_permissions", "-p", "empty", "--formatter", "csv").out == "\r\n\r\n\n"


def test_queues_bindings_connections(node: NodeProcess) -> None:
    ok(node, "add_vhost", "inspect")
    ok(node, "set_permissions", "-p", "inspect", "guest", ".*", ".*", ".*")
    conn = connect(node, "inspect")
    try:
        ch = conn.channel()
        ch.queue_declare("iq1", durable=True)
        ch.queue_declare("iq2", durable=False)
        ch.exchange_declare("ix", "topic")
        ch.exchange_declare("ih", "headers")
        ch.queue_bind("iq2", "ih", "", arguments={"x-match": "any", "k": 1})
        ch.queue_bind("iq1", "ix", "b.*")
        ch.exchange_bind("ih", "ix", "a.#")
        for i in range(3):
            ch.basic_publish("", "iq1", b"hello %d" % i, pika.BasicProperties(delivery_mode=2, timestamp=1700000000))
        ch.basic_publish("", "iq2", b"x" * 10, pika.BasicProperties(delivery_mode=2))
        ch2 = conn.channel()
        ch2.basic_consume("iq2", lambda *a: None, consumer_tag="ex-tag", exclusive=True)

        columns = ("name messages_persistent message_bytes_persistent messages_ram messages_ready_ram "
                   "message_bytes_ram head_message_timestamp consumers consumer_utilisation exclusive_consumer_tag "
                   "leader members online slave_pids").split()
        rows = {r["name"]: r for r in json.loads(ok(node, "list_queues", "-p", "inspect", *columns,
                                                    "--formatter", "json").out)}
        assert rows["iq1"] == {"name": "iq1", "messages_persistent": 3, "message_bytes_persistent": 21,
                               "messages_ram": 3, "messages_ready_ram": 3, "message_bytes_ram": 21,
                               "head_message_timestamp": 1700000000, "consumers": 0, "consumer_utilisation": 0,
                               "exclusive_consumer_tag": "", "leader": "", "members": "", "online": "",
                               "slave_pids": ""}
        # A transient queue holds no persistent messages, as RabbitMQ counts them.
        assert rows["iq2"]["messages_persistent"] == 0 and rows["iq2"]["consumer_utilisation"] == 1.0
        assert rows["iq2"]["exclusive_consumer_tag"] == "ex-tag"
        assert ok(node, "-s", "list_queues", "-p", "inspect", "--offline").out == ""
        assert sorted(ok(node, "-s", "list_queues", "-p", "inspect", "name", "--online", "--local").lines) == \
            ["iq1", "iq2"]

        r = ok(node, "-s", "list_bindings", "-p", "inspect", "source_name", "destination_name", "routing_key",
               "arguments")
        assert r.lines[-3:] == ['ih\tiq2\t\t[{"k",1},{"x-match","any"}]', "ix\tih\ta.#\t[]", "ix\tiq1\tb.*\t[]"]

        r = ok(node, "-s", "list_connections", "vhost", "protocol", "ssl", "ssl_protocol", "peer_cert_issuer")
        assert r.lines == ["inspect\t{0,9,1}\tfalse\t\t"]
        assert json.loads(ok(node, "list_connections", "protocol", "--formatter", "json").out) == \
            [{"protocol": [0, 9, 1]}]
        r = ok(node, "-q", "list_queues", "-p", "inspect", "name", "durable", "--formatter", "csv")
        assert r.lines[0] == '"name","durable"' and '"iq1","true"' in r.lines

        # delete_queue's conditions, in RabbitMQ's words (the emptiness one is checked first).
        r = ctl(node, "delete_queue", "-p", "inspect", "iq1", "--if-empty")
        assert (r.err, r.code) == ("Error:\nQueue is not empty\n", 64)
        r = ctl(node, "delete_queue", "-p", "inspect", "iq2", "-u")
        assert (r.err, r.code) == ("Error:\nQueue is in use\n", 64)
        r = ok(node, "delete_queue", "-p", "inspect", "iq1", "--formatter", "json")
        assert r.out == '{"message":"Queue was successfully deleted with 3 ready messages"}\n'
        assert ok(node, "purge_queue", "-p", "inspect", "iq2", "--formatter", "json").out == \
            f'{{"node":"{node.name}","result":"ok"}}\n'
    finally:
        conn.close()


def test_close_connection_pids(node: NodeProcess) -> None:
    r = ctl(node, "close_connection", "bogus", "reason")
    assert (r.out, r.err, r.code) == ("Closing connection bogus, reason: reason...\n",
                                      'Error:\nError:\n{:invalid_pid_syntax, "bogus"}\n', 69)
    # A pid that is no connection: RabbitMQ logs a warning and succeeds.
    r = ok(node, "close_connection", f"<{node.name}.999.1.2>", "reason")
    assert r.out == f"Closing connection <{node.name}.999.1.2>, reason: reason...\n"


def test_delete_queue_if_empty_counts_ready_messages_only(node: NodeProcess) -> None:
    conn = connect(node)
    try:
        ch = conn.channel()
        ch.queue_declare("unacked-only")
        ch.basic_publish("", "unacked-only", b"x")
        ch.basic_qos(prefetch_count=1)
        got: list[bytes] = []
        ch.basic_consume("unacked-only", lambda _ch, _m, _p, body: got.append(body))
        while not got:
            conn.process_data_events(0.1)
        # rabbitmqctl 3.10.8: the one message is delivered and unacknowledged, so the queue is empty.
        r = ok(node, "delete_queue", "unacked-only", "--if-empty")
        assert r.lines == ["Deleting queue 'unacked-only' on vhost '/' if queue is empty ...",
                           "Queue was successfully deleted with 0 ready messages"]
    finally:
        try:
            conn.close()
        except pika.exceptions.AMQPError:
            pass


def test_cluster_status_of_a_cluster_of_one(node: NodeProcess) -> None:
    r = ok(node, "cluster_status")
    lines = r.lines
    assert lines[:12] == [f"Cluster status of node {node.name} ...", "Basics", "", f"Cluster name: {node.name}",
                          "", "Disk Nodes", "", node.name, "", "Running Nodes", "", node.name]
    assert f"Node: {node.name}, status: not under maintenance" in lines
    assert lines[lines.index("Network Partitions") + 2] == "(none)"
    assert (f"Node: {node.name}, interface: 127.0.0.1, port: {node.dist_port}, protocol: clustering, "
            "purpose: inter-node and CLI tool communication") in lines
    shaped = json.loads(ok(node, "cluster_status", "--formatter", "json").out)
    assert sorted(shaped) == ["alarms", "cluster_name", "disk_nodes", "feature_flags", "listeners",
                              "maintenance_status", "partitions", "ram_nodes", "running_nodes", "versions"]
    assert shaped["running_nodes"] == shaped["disk_nodes"] == [node.name] and shaped["partitions"] == {}


def test_node_health_check(node: NodeProcess) -> None:
    assert ok(node, "node_health_check").lines == [
        "This command is DEPRECATED and will be removed in a future version.",
        "It performs intrusive, opinionated health checks and requires a fully booted node.",
        "Use one of the options covered in https://www.rabbitmq.com/monitoring.html#health-checks instead.",
        "Timeout: 70 seconds ...", f"Checking health of node {node.name} ...", "Health check passed"]
    assert ok(node, "-q", "node_health_check").out == "Health check passed\n"
    assert ok(node, "node_health_check", "--formatter", "json").out == '{"message":"Health check passed"}\n'
    assert ok(node, "await_startup", "--formatter", "json").out == f'{{"node":"{node.name}","result":"ok"}}\n'
    assert ok(node, "-t", "5", "node_health_check").lines[3] == "Timeout: 5 seconds ..."


def test_list_consumers_prints_columns_in_its_own_order(node: NodeProcess) -> None:
    conn = connect(node)
    try:
        ch = conn.channel()
        ch.queue_declare("consumed")
        ch.basic_consume("consumed", lambda *a: None, consumer_tag="c-tag")
        # rabbitmqctl list_consumers consumer_tag queue_name: "queue_name\tconsumer_tag".
        r = ok(node, "-q", "list_consumers", "consumer_tag", "queue_name")
        assert r.lines == ["queue_name\tconsumer_tag", "consumed\tc-tag"]
        r = ok(node, "list_consumers", "arguments", "prefetch_count", "ack_required", "--formatter", "json")
        assert r.out == '[\n{"ack_required":true,"prefetch_count":0,"arguments":[]}\n]\n'
    finally:
        conn.close()


def test_close_all_connections_limit(node: NodeProcess) -> None:
    ok(node, "add_vhost", "closing")
    ok(node, "set_permissions", "-p", "closing", "guest", ".*", ".*", ".*")
    conns = [connect(node, "closing") for _ in range(3)]
    try:
        r = ok(node, "close_all_connections", "-p", "closing", "--limit", "2", "bye")
        assert r.lines == ["Closing 2 connections in vhost closing, reason: bye...", "Closed 2 connections"]
        # --limit 0 is no limit, as in rabbitmqctl.
        r = ok(node, "close_all_connections", "-p", "closing", "--limit", "0", "bye")
        assert r.lines == ["Closing all connections in vhost closing, reason: bye...", "Closed 1 connections"]
    finally:
        for conn in conns:
            try:
                conn.close()
            except pika.exceptions.AMQPError:
                pass


def test_invalid_topic_permission_regexp_is_shown_as_a_binary(node: NodeProcess) -> None:
    r = ctl(node, "set_topic_permissions", "guest", "amq.topic", "(", "^b")
    assert (r.err, r.code) == ("Error:\n{:invalid_regexp, \"(\", {'missing )', 1}}\n", 69)
    r = ctl(node, "set_permissions", "guest", "(", ".*", ".*")
    assert (r.err, r.code) == ("Error:\n{:invalid_regexp, '(', {'missing )', 1}}\n", 69)


def test_a_stopped_app_is_reported_before_any_banner(node: NodeProcess) -> None:
    ok(node, "stop_app")
    try:
        r = ctl(node, "list_queues")
        assert r.out == "" and r.code == 64
        assert r.err.startswith("Error: this command requires the 'leveret' app to be running on the target node. "
                                "Start it with 'leveretctl start_app'.\nArguments given:\n")
        assert ctl(node, "cluster_status").out == ""
        assert ctl(node, "node_health_check").code == 64
    finally:
        ok(node, "start_app")
        ok(node, "await_startup")


def test_a_quorum_queue_is_listed_as_one(node: NodeProcess) -> None:
    conn = connect(node)
    try:
        conn.channel().queue_declare("qq", durable=True, arguments={"x-queue-type": "quorum"})
        rows = json.loads(ok(node, "list_queues", "name", "type", "leader", "members", "online",
                             "consumer_utilisation", "--formatter", "json").out)
        # As rabbitmqctl 3.10.8 listed a quorum queue on a single node.
        assert {"name": "qq", "type": "quorum", "leader": node.name, "members": [node.name],
                "online": [node.name], "consumer_utilisation": ""} in rows
    finally:
        conn.close()


def test_an_empty_vhost_name_is_not_the_default_vhost(node: NodeProcess) -> None:
    # rabbitmqctl 3.10.8 with -p '': a vhost named "", which does not exist.
    r = ctl(node, "list_permissions", "-p", "")
    assert (r.out, r.err, r.code) == ('Listing permissions for vhost "" ...\n', "Virtual host '' does not exist\n", 65)
    r = ctl(node, "set_permissions", "-p", "", "guest", ".*", ".*", ".*")
    assert (r.err, r.code) == ("Error:\nVirtual host  does not exist\n", 69)
    assert ok(node, "list_exchanges", "-p", "").out == "Listing exchanges for vhost  ...\n"


def test_empty_user_and_queue_names_are_bad_arguments(node: NodeProcess) -> None:
    r = ctl(node, "add_user", "", "x")
    assert r.out == "" and r.code == 65
    assert r.err.startswith("Error (argument validation): Bad argument: user cannot be an empty string\n")
    r = ctl(node, "delete_queue", "")
    assert r.out == "" and r.code == 65
    assert r.err.startswith("Error (argument validation): Bad argument: queue name cannot be an empty string\n")


def test_resource_limit_commands_in_json(node: NodeProcess) -> None:
    done = f'{{"node":"{node.name}","result":"ok"}}\n'
    assert ok(node, "set_vm_memory_high_watermark", "0.4", "--formatter", "json").out == done
    assert ok(node, "set_disk_free_limit", "50000000", "--formatter", "json").out == done
    assert "Low free disk space watermark: 50.0 mb" in ok(node, "status", "--unit", "mb").lines
    ok(node, "set_disk_free_limit", "60MB")
    # status shows the limit in force, not the configured one.
    assert "Low free disk space watermark: 60.0 mb" in ok(node, "status", "--unit", "mb").lines
    ok(node, "set_disk_free_limit", "50000000")


def test_a_column_asked_for_twice_is_shown_once(node: NodeProcess) -> None:
    # rabbitmqctl -q list_exchanges name type name type durable name: "name\ttype\tdurable".
    assert ok(node, "-q", "list_exchanges", "name", "type", "name", "type", "durable", "name").lines[0] == \
        "name\ttype\tdurable"
    assert ok(node, "-q", "list_vhosts", "tracing", "name", "tracing").lines[0] == "tracing\tname"
