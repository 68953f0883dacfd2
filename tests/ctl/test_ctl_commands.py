"""Every leveretctl command against a real node: output shapes (as rabbitmqctl 3.10.8 prints
them), errors and exit codes. One node for the module; each test uses names of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pika.exceptions
import pytest

from cluster.cookie import cookie_hash
from tests.ctl.support import connect, ctl, ok, wait_until
from tests.support.node_process import NodeProcess, free_port

FIXTURE = Path(__file__).with_name("rabbitmq-3.10.8-definitions.json")


@pytest.fixture(scope="module")
def node():
    with NodeProcess(name="ctl@localhost").start() as proc:
        yield proc


class CookieFileNode(NodeProcess):
    """A node without LEVERET_COOKIE: it uses (or creates) $HOME/.leveret.cookie."""

    def env(self) -> dict[str, str]:
        env = super().env()
        del env["LEVERET_COOKIE"]
        return env


# --------------------------------------------------------------------------- users


def test_users(node: NodeProcess) -> None:
    r = ok(node, "add_user", "alice", "s3cret")
    assert r.lines == ['Adding user "alice" ...',
                       "Done. Don't forget to grant the user permissions to some virtual hosts! "
                       "See 'leveretctl help set_permissions' to learn more."]
    r = ctl(node, "add_user", "alice", "x")
    assert (r.out, r.err, r.code) == ('Adding user "alice" ...\n', 'Error:\nUser "alice" already exists\n', 70)

    r = ok(node, "authenticate_user", "alice", "s3cret")
    assert r.lines == ['Authenticating user "alice" ...', "Success"]
    r = ctl(node, "authenticate_user", "alice", "wrong")
    assert r.code == 65
    assert r.err == 'Error:\nError: failed to authenticate user "alice"\nuser \'alice\' - invalid credentials\n'

    assert ok(node, "change_password", "alice", "n3w").lines == ['Changing password for user "alice" ...']
    assert ctl(node, "authenticate_user", "alice", "s3cret").code == 65
    assert ok(node, "authenticate_user", "alice", "n3w").code == 0
    assert ok(node, "clear_password", "alice").lines == ['Clearing password for user "alice" ...']
    assert ctl(node, "authenticate_user", "alice", "n3w").code == 65

    r = ok(node, "set_user_tags", "alice", "administrator", "monitoring")
    assert r.lines == ['Setting tags for user "alice" to [administrator, monitoring] ...']
    r = ok(node, "list_users")
    assert r.lines[:2] == ["Listing users ...", "user\ttags"]
    assert "alice\t[administrator, monitoring]" in r.lines
    assert "guest\t[administrator]" in r.lines
    assert ok(node, "-q", "list_users").lines[0] == "user\ttags"
    assert "user\ttags" not in ok(node, "-s", "list_users").lines
    r = ok(node, "list_users", "--formatter", "json")
    assert r.out.startswith("[\n{") and r.out.endswith("\n]\n")
    assert {"user": "alice", "tags": ["administrator", "monitoring"]} in json.loads(r.out)

    for command in (["delete_user", "nobody"], ["change_password", "nobody", "x"], ["set_user_tags", "nobody", "a"]):
        r = ctl(node, *command)
        assert (r.err, r.code) == ('Error:\nUser "nobody" does not exist\n', 67), command
    assert ok(node, "delete_user", "alice").lines == ['Deleting user "alice" ...']
    assert "alice" not in ok(node, "-s", "list_users").out
    assert ok(node, "-q", "add_user", "quiet", "pw").out == ""


# --------------------------------------------------------------------------- vhosts and permissions


def test_vhosts_and_permissions(node: NodeProcess) -> None:
    assert ok(node, "add_vhost", "celery").lines == ['Adding vhost "celery" ...']
    assert ok(node, "add_vhost", "celery").code == 0  # idempotent, as in RabbitMQ
    ok(node, "add_user", "ever01", "pw01")
    r = ok(node, "list_vhosts", "name", "tracing", "cluster_state")
    assert r.lines[:2] == ["Listing vhosts ...", "name\ttracing\tcluster_state"]
    assert "celery\tfalse\t[{ctl@localhost, running}]" in r.lines
    assert {"name": "celery"} in json.loads(ok(node, "list_vhosts", "--formatter", "json").out)
    r = ctl(node, "list_vhosts", "bogus")
    assert r.code == 64 and r.out == ""
    assert r.err.startswith("Error (argument validation): Info key(s) bogus are not supported\nArguments given:\n")

    r = ok(node, "set_permissions", "-p", "celery", "ever01", ".*", ".*", ".*")
    assert r.lines == ['Setting permissions for user "ever01" in vhost "celery" ...']
    r = ok(node, "list_permissions", "-p", "celery")
    assert r.lines == ['Listing permissions for vhost "celery" ...', "user\tconfigure\twrite\tread", "ever01\t.*\t.*\t.*"]
    assert json.loads(ok(node, "list_permissions", "-p", "celery", "--formatter", "json").out) == [
        {"user": "ever01", "configure": ".*", "write": ".*", "read": ".*"}]
    r = ok(node, "list_user_permissions", "ever01")
    assert r.lines == ['Listing permissions for user "ever01" ...', "vhost\tconfigure\twrite\tread",
                       "celery\t.*\t.*\t.*"]
    # The new user really can use the vhost.
    params = pika.URLParameters(f"amqp://ever01:pw01@127.0.0.1:{node.port}/celery")
    pika.BlockingConnection(params).close()

    r = ctl(node, "set_permissions", "-p", "nosuch", "ever01", ".*", ".*", ".*")
    assert (r.err, r.code) == ("Error:\nVirtual host nosuch does not exist\n", 69)
    r = ctl(node, "set_permissions", "-p", "celery", "nobody", ".*", ".*", ".*")
    assert (r.err, r.code) == ("Error:\nUser nobody does not exist\n", 67)
    r = ctl(node, "set_permissions", "-p", "celery", "ever01", "(", ".*", ".*")
    assert (r.err, r.code) == ("Error:\n{:invalid_regexp, '(', {'missing )', 1}}\n", 69)
    r = ctl(node, "set_permissions", "ever01", "a", "b")
    assert r.code == 64 and r.err.startswith("Error (argument validation): not enough arguments.")
    r = ctl(node, "list_permissions", "-p", "nosuch")
    assert (r.err, r.code) == ("Virtual host 'nosuch' does not exist\n", 65)
    r = ctl(node, "list_user_permissions", "nobody")
    assert (r.err, r.code) == ('Error:\n{:no_such_user, "nobody"}\n', 69)
    r = ctl(node, "delete_vhost", "nosuch")
    assert (r.out, r.err, r.code) == ('Deleting vhost "nosuch" ...\n', "Virtual host 'nosuch' does not exist\n", 65)

    r = ok(node, "set_topic_permissions", "-p", "celery", "ever01", "amq.topic", "^a", "^b")
    assert r.lines == ['Setting topic permissions on "amq.topic" for user "ever01" in vhost "celery" ...']
    assert ok(node, "list_topic_permissions", "-p", "celery").lines == [
        'Listing topic permissions for vhost "celery" ...', "user\texchange\twrite\tread", "ever01\tamq.topic\t^a\t^b"]
    assert ok(node, "list_user_topic_permissions", "ever01").lines == [
        'Listing topic permissions for user "ever01" ...', "celery\tamq.topic\t^a\t^b"]
    r = ctl(node, "set_topic_permissions", "-p", "celery", "nobody", "amq.topic", "a", "b")
    assert (r.err, r.code) == ("Error:\nUser nobody does not exist\n", 67)
    ok(node, "clear_topic_permissions", "-p", "celery", "ever01")
    # No rows: rabbitmqctl prints an empty line, even with -q.
    assert ok(node, "-q", "list_topic_permissions", "-p", "celery").out == "\n"

    assert ok(node, "clear_permissions", "-p", "celery", "ever01").lines == [
        'Clearing permissions for user "ever01" in vhost "celery" ...']
    assert ok(node, "-q", "list_permissions", "-p", "celery").out == "\n"
    r = ctl(node, "clear_permissions", "-p", "celery", "nobody")
    assert (r.err, r.code) == ("Error:\nUser nobody does not exist\n", 67)
    assert ok(node, "delete_vhost", "celery").lines == ['Deleting vhost "celery" ...']
    assert "celery" not in ok(node, "-q", "list_vhosts").lines


# --------------------------------------------------------------------------- policies


def test_policies(node: NodeProcess) -> None:
    ok(node, "add_vhost", "pol")
    r = ok(node, "set_policy", "-p", "pol", "ha-all", "^q", '{"message-ttl":1000,"ha-mode":"all"}',
           "--priority", "2", "--apply-to", "queues")
    assert r.lines == ['Setting policy "ha-all" for pattern "^q" to "{"message-ttl":1000,"ha-mode":"all"}" '
                       'with priority "2" for vhost "pol" ...']
    r = ok(node, "list_policies", "-p", "pol")
    assert r.lines == ['Listing policies for vhost "pol" ...', "vhost\tname\tpattern\tapply-to\tdefinition\tpriority",
                       'pol\tha-all\t^q\tqueues\t{"ha-mode":"all","message-ttl":1000}\t2']
    assert ok(node, "list_policies", "-p", "pol", "--formatter", "json").out == (
        '[\n{"vhost":"pol","name":"ha-all","pattern":"^q","apply-to":"queues",'
        '"definition":"{\\"ha-mode\\":\\"all\\",\\"message-ttl\\":1000}","priority":2}\n]\n')

    def refused(definition: str, *extra: str, vhost: str = "pol") -> str:
        r = ctl(node, "set_policy", "-p", vhost, "p2", *extra[:1] or ("^q",), definition, *extra[1:])
        assert r.code == 69, r
        return r.err

    assert refused('{"message-ttl":"x"}') == 'Error:\nValidation failed\n\n<<"x">> is not a valid message TTL\n\n'
    assert refused('{bad json').startswith("Error:\nJSON decoding error. Reason: ")
    assert refused('{"foo":1}') == (
        'Error:\nValidation failed\n\n[{<<"foo">>,1}] are not recognised policy settings\n\n')
    assert refused('{"max-length":1}', "(") == (
        'Error:\nValidation failed\n\npattern should be regular expression but is invalid: {"missing )",1}\n\n')
    assert refused('{"ha-mode":"exactly"}') == (
        'Error:\nValidation failed\n\nha-mode="exactly" takes an integer, none given\n\n')
    assert refused('{"ha-params":2}') == ("Error:\nValidation failed\n\nha-mode must be specified to specify "
                                          "ha-params, ha-sync-mode or ha-promote-on-shutdown\n\n")
    assert refused('{"max-length":-1}') == "Error:\nValidation failed\n\n-1 is not a valid maximum length\n\n"
    assert refused("{}") == "Error:\nValidation failed\n\nno policy provided\n\n"
    assert refused('{"max-length":1}', "^q", "--apply-to", "bogus") == (
        "Error:\nValidation failed\n\napply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'\n\n")
    r = ctl(node, "set_policy", "-p", "nosuch", "p", "^q", '{"max-length":1}')
    assert (r.err, r.code) == ("Virtual host 'nosuch' does not exist\n", 65)
    r = ctl(node, "set_policy", "p", "^q", '{"max-length":1}', "--priority", "x")
    assert r.code == 64 and "--priority : x" in r.err

    assert ok(node, "clear_policy", "-p", "pol", "ha-all").lines == ['Clearing policy "ha-all" on vhost "pol" ...']
    r = ctl(node, "clear_policy", "-p", "pol", "ha-all")
    assert (r.err, r.code) == ("Error:\nParameter does not exist\n", 69)
    assert ok(node, "list_policies", "-p", "pol").lines == ['Listing policies for vhost "pol" ...', ""]
    assert ok(node, "list_policies", "-p", "pol", "--formatter", "json").out == "[]\n"


def test_policies_apply_to_queues(node: NodeProcess) -> None:
    ok(node, "set_policy", "ttl-pol", r"^ctl-ttl\.", '{"message-ttl":200}', "--apply-to", "queues")
    ok(node, "set_policy", "len-pol", r"^ctl-len\.", '{"max-length":2}', "--apply-to", "queues")
    ok(node, "set_policy", "len-strong", r"^ctl-len\.strong", '{"max-length":1}', "--priority", "5")
    conn = connect(node)
    ch = conn.channel()
    ch.queue_declare("ctl-ttl.a")
    ch.queue_declare("ctl-len.a")
    ch.queue_declare("ctl-len.strong")
    ch.queue_declare("ctl-len.args", arguments={"x-max-length": 3})  # argument 3 vs policy 2: the lower wins
    for i in range(5):
        for q in ("ctl-ttl.a", "ctl-len.a", "ctl-len.strong", "ctl-len.args"):
            ch.basic_publish("", q, f"m{i}".encode())
    r = ok(node, "-q", "list_queues", "name", "policy", "messages")
    assert "ctl-len.a\tlen-pol\t2" in r.lines
    assert "ctl-len.strong\tlen-strong\t1" in r.lines  # the higher priority policy wins
    assert "ctl-len.args\tlen-pol\t2" in r.lines
    # max-length drops from the head: the newest messages stay.
    assert [ch.basic_get("ctl-len.a", auto_ack=True)[2] for _ in range(2)] == [b"m3", b"m4"]
    wait_until(lambda: "ctl-ttl.a\tttl-pol\t0" in ok(node, "-q", "list_queues", "name", "policy", "messages").lines)
    # Clearing the policy lifts the limit for new messages.
    ok(node, "clear_policy", "len-pol")
    for i in range(4):
        ch.basic_publish("", "ctl-len.a", b"x")
    assert "ctl-len.a\t\t4" in ok(node, "-q", "list_queues", "name", "policy", "messages").lines
    # Exchange policies: alternate-exchange; queue policies: dead-lettering of expired messages.
    ch.exchange_declare("ctl-ae", "fanout")
    ch.queue_declare("ctl-ae.q")
    ch.queue_bind("ctl-ae.q", "ctl-ae")
    ch.exchange_declare("ctl-src", "direct")
    ok(node, "set_policy", "ae-pol", "^ctl-src$", '{"alternate-exchange":"ctl-ae"}', "--apply-to", "exchanges")
    assert "ctl-src\tae-pol" in ok(node, "-q", "list_exchanges", "name", "policy").lines
    ch.basic_publish("ctl-src", "nowhere", b"unroutable")
    ch.queue_declare("ctl-dl.q")
    ok(node, "set_policy", "dl-pol", r"^ctl-ttl\.dl$", '{"message-ttl":100,"dead-letter-exchange":"",'
                                                         '"dead-letter-routing-key":"ctl-dl.q"}', "--priority", "9")
    ch.queue_declare("ctl-ttl.dl")
    ch.basic_publish("", "ctl-ttl.dl", b"expiring")
    wait_until(lambda: "ctl-dl.q\t1" in ok(node, "-q", "list_queues").lines)
    assert ch.basic_get("ctl-dl.q", auto_ack=True)[2] == b"expiring"
    assert ch.basic_get("ctl-ae.q", auto_ack=True)[2] == b"unroutable"
    conn.close()
    for name in ("ttl-pol", "len-strong", "ae-pol", "dl-pol"):
        ok(node, "clear_policy", name)


# --------------------------------------------------------------------------- inspection and operations


def test_inspection_and_operations(node: NodeProcess) -> None:
    conn = connect(node)
    ch = conn.channel()
    ch.queue_declare("ctl-q1", durable=True, arguments={"x-max-length": 10})
    ch.queue_declare("ctl-q2", auto_delete=True)
    ch.exchange_declare("ctl-x1", "topic", durable=True)
    ch.queue_bind("ctl-q1", "ctl-x1", "a.#", arguments={"k": 1})
    for _ in range(3):
        ch.basic_publish("", "ctl-q1", b"hello")
    ch.basic_qos(prefetch_count=5)
    ch.basic_consume("ctl-q2", lambda *a: None, consumer_tag="ctag1")

    r = ok(node, "list_queues")
    assert r.lines[:3] == ["Timeout: 60.0 seconds ...", "Listing queues for vhost / ...", "name\tmessages"]
    assert "ctl-q1\t3" in r.lines and "ctl-q2\t0" in r.lines
    items = ("name durable auto_delete exclusive arguments policy messages messages_ready "
             "messages_unacknowledged consumers memory state type").split()
    r = ok(node, "-q", "list_queues", *items)
    assert r.lines[0] == "\t".join(items)
    row = next(line.split("\t") for line in r.lines if line.startswith("ctl-q1\t"))
    assert row[:10] == ["ctl-q1", "true", "false", "false", '[{"x-max-length",10}]', "", "3", "3", "0", "0"]
    assert int(row[10]) > 0 and row[11:] == ["running", "classic"]
    row = next(line.split("\t") for line in r.lines if line.startswith("ctl-q2\t"))
    assert row[1:4] == ["false", "true", "false"] and row[9] == "1"
    rows = json.loads(ok(node, "list_queues", "name", "arguments", "--formatter", "json").out)
    assert {"name": "ctl-q1", "arguments": [["x-max-length", "signedint", 10]]} in rows
    r = ctl(node, "list_queues", "bogus")
    assert r.code == 64 and "Info key(s) bogus are not supported" in r.err

    r = ok(node, "list_exchanges", "name", "type", "durable", "internal")
    assert r.lines[:2] == ["Listing exchanges for vhost / ...", "name\ttype\tdurable\tinternal"]
    assert "ctl-x1\ttopic\ttrue\tfalse" in r.lines and "\tdirect\ttrue\tfalse" in r.lines
    assert "amq.rabbitmq.trace\ttopic\ttrue\ttrue" in r.lines

    r = ok(node, "list_bindings")
    assert r.lines[:2] == ["Listing bindings for vhost /...",
                           "source_name\tsource_kind\tdestination_name\tdestination_kind\trouting_key\targuments"]
    assert "\texchange\tctl-q1\tqueue\tctl-q1\t[]" in r.lines
    assert 'ctl-x1\texchange\tctl-q1\tqueue\ta.#\t[{"k",1}]' in r.lines
    assert {"source_name": "ctl-x1", "source_kind": "exchange", "destination_name": "ctl-q1",
            "destination_kind": "queue", "routing_key": "a.#", "arguments": [["k", "signedint", 1]]} in \
        json.loads(ok(node, "list_bindings", "--formatter", "json").out)

    r = ok(node, "list_connections", "pid", "name", "user", "vhost", "state", "channels", "peer_host")
    assert r.lines[:2] == ["Listing connections ...", "pid\tname\tuser\tvhost\tstate\tchannels\tpeer_host"]
    conn_rows = [line.split("\t") for line in r.lines[2:]]
    assert len(conn_rows) == 1
    pid, name, user, vhost, state, channels, peer_host = conn_rows[0]
    assert pid.startswith("<ctl@localhost.") and name.endswith(f" -> 127.0.0.1:{node.port}")
    assert (user, vhost, state, channels, peer_host) == ("guest", "/", "running", "1", "127.0.0.1")
    assert ok(node, "list_connections").lines[1] == "user\tpeer_host\tpeer_port\tstate"

    r = ok(node, "list_channels", "name", "number", "user", "consumer_count", "prefetch_count")
    assert r.lines == ["Listing channels ...", "name\tnumber\tuser\tconsumer_count\tprefetch_count",
                       f"{name} (1)\t1\tguest\t1\t5"]
    r = ok(node, "list_consumers")
    assert r.lines == ["Listing consumers in vhost / ...",
                       "queue_name\tchannel_pid\tconsumer_tag\tack_required\tprefetch_count\tactive\targuments",
                       f"ctl-q2\t{pid[:-1]}.1>\tctag1\ttrue\t5\ttrue\t[]"]

    assert ok(node, "purge_queue", "ctl-q1").lines == ["Purging queue 'ctl-q1' in vhost '/' ..."]
    assert "ctl-q1\t0" in ok(node, "-q", "list_queues").lines
    r = ctl(node, "purge_queue", "nosuch")
    assert (r.err, r.code) == ("Error:\nnot_found\n", 69)
    r = ctl(node, "delete_queue", "nosuch")
    assert (r.err, r.code) == ("Error:\nQueue not found\n", 64)
    ch.basic_publish("", "ctl-q1", b"again")
    r = ok(node, "delete_queue", "ctl-q1")
    assert r.lines == ["Deleting queue 'ctl-q1' on vhost '/' ...", "Queue was successfully deleted with 1 ready messages"]
    assert "ctl-q1" not in ok(node, "-q", "list_queues").out

    r = ok(node, "close_connection", pid, "go away")
    assert r.lines == [f"Closing connection {pid}, reason: go away..."]
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        conn.process_data_events(2)
        conn.process_data_events(2)
    assert (closed.value.reply_code, closed.value.reply_text) == (320, "CONNECTION_FORCED - go away")
    wait_until(lambda: ok(node, "-q", "list_connections").out == "")

    other = connect(node)
    r = ok(node, "close_all_connections", "bye")
    assert r.lines == ["Closing all connections in vhost /, reason: bye...", "Closed 1 connections"]
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
        other.process_data_events(2)
        other.process_data_events(2)


# --------------------------------------------------------------------------- definitions


def test_import_rabbitmq_export_and_export_back(node: NodeProcess, tmp_path: Path) -> None:
    r = ok(node, "import_definitions", str(FIXTURE))
    assert r.lines[0] == f'Importing definitions in JSON from a file at "{FIXTURE}" ...'
    assert r.lines[1].startswith("Successfully imported definitions (")
    assert ok(node, "import_definitions", str(FIXTURE)).code == 0  # importing twice changes nothing

    # The password hash RabbitMQ exported verifies here.
    assert ok(node, "authenticate_user", "ever01", "secret01").lines[-1] == "Success"
    assert ok(node, "-q", "list_users").lines.count("ever01\t[monitoring]") == 1
    assert "celery" in ok(node, "-q", "list_vhosts").lines
    r = ok(node, "-q", "list_queues", "-p", "celery", "name", "durable", "arguments", "policy")
    assert 'celery\ttrue\t[{"x-max-priority",10}]\t' in r.lines
    assert 'ttl.jobs\ttrue\t[{"x-message-ttl",30000}]\tttl' in r.lines
    r = ok(node, "-q", "list_exchanges", "-p", "celery", "name", "type", "arguments")
    assert 'events\ttopic\t[{"alternate-exchange","dlx"}]' in r.lines
    r = ok(node, "-q", "list_bindings", "-p", "celery")
    assert "events\texchange\tcelery\texchange\ttask.*\t[]" in r.lines
    r = ok(node, "-q", "list_policies", "-p", "celery")
    assert 'celery\tha\t^ha\\.\tall\t{"ha-mode":"exactly","ha-params":2,"ha-sync-mode":"automatic"}\t0' in r.lines
    assert ok(node, "-q", "list_user_topic_permissions", "ever01").lines == ["celery\tamq.topic\t^tasks\t.*"]
    # The imported user works with a real client.
    params = pika.URLParameters(f"amqp://ever01:secret01@127.0.0.1:{node.port}/celery")
    c = pika.BlockingConnection(params)
    c.channel().basic_publish("celery", "celery", b"task")
    c.close()

    out = tmp_path / "export.json"
    r = ok(node, "export_definitions", str(out))
    assert r.lines == [f'Exporting definitions in JSON to a file at "{out}" ...']
    exported = json.loads(out.read_text())
    original = json.loads(FIXTURE.read_text())
    for key in ("users", "vhosts", "permissions", "topic_permissions", "policies", "queues", "exchanges",
                "bindings"):
        assert key in exported
    names = {(q["vhost"], q["name"]) for q in exported["queues"]}
    assert {(q["vhost"], q["name"]) for q in original["queues"]} <= names
    policy = next(p for p in exported["policies"] if p["name"] == "ttl")
    assert policy == next(p for p in original["policies"] if p["name"] == "ttl")
    user = next(u for u in exported["users"] if u["name"] == "ever01")
    assert user["password_hash"] == next(u for u in original["users"] if u["name"] == "ever01")["password_hash"]
    assert not any(x["name"].startswith("amq.") or x["name"] == "" for x in exported["exchanges"])
    assert json.loads(ok(node, "export_definitions", "-").out) == exported

    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    r = ctl(node, "import_definitions", str(bad))
    assert r.code == 65 and r.err.startswith("Error:\nFailed to deserialise input (format: JSON) (error: ")
    r = ctl(node, "import_definitions", str(tmp_path / "missing.json"))
    assert r.code == 65 and r.err.startswith(
        f"Error (argument validation): Bad argument: File {tmp_path / 'missing.json'} does not exist")
    r = ctl(node, "export_definitions", "/nonexistent-dir/x.json")
    assert r.code == 65 and "Bad argument: Directory /nonexistent-dir does not exist" in r.err
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"policies": [{"vhost": "/", "name": "p", "pattern": "^a",
                                                 "definition": {"max-length": "x"}}]}))
    r = ctl(node, "import_definitions", str(invalid))
    assert r.code == 65 and '<<"x">> is not a valid maximum length' in r.err


# --------------------------------------------------------------------------- node, usage, failures


def test_node_commands(node: NodeProcess) -> None:
    r = ok(node, "ping")
    assert r.lines == [f"Will ping {node.name}. This only checks if the OS process is running and the CLI tool "
                       "can authenticate with it. Timeout: 60000 ms.", "Ping succeeded"]
    assert ok(node, "-q", "ping").lines == ["Ping succeeded"]
    r = ok(node, "status")
    assert r.lines[0] == f"Status of node {node.name} ..."
    assert f"OS PID: {node.proc.pid}" in r.lines
    assert f"Interface: 127.0.0.1, port: {node.port}, protocol: amqp, purpose: AMQP 0-9-1" in r.lines
    assert (f"Interface: 127.0.0.1, port: {node.dist_port}, protocol: clustering, "
            "purpose: inter-node and CLI tool communication") in r.lines
    status = json.loads(ok(node, "status", "--formatter", "json").out)
    assert status["node_name"] == node.name and status["pid"] == node.proc.pid
    r = ok(node, "environment")
    assert r.lines[0] == f"Application environment of node {node.name} ..."
    assert f"{{dist_port,{node.dist_port}}}" in r.out and node.cookie not in r.out
    env = json.loads(ok(node, "environment", "--formatter", "json").out)
    assert env["leveret"]["node_port"] == node.port and "cookie" not in env["leveret"]
    r = ok(node, "report")
    assert r.lines[0] == f"Reporting server status of node {node.name} ..."
    assert "Queues on /:" in r.lines and "Policies on /:" in r.lines


def test_usage_errors(node: NodeProcess) -> None:
    r = ctl(node, "add_user")
    assert r.code == 64 and r.out == ""
    assert r.err.startswith("Error (argument validation): not enough arguments.\nArguments given:\n")
    assert r.err.rstrip().endswith("add_user <username> <password>")
    r = ctl(node, "add_user", "a", "b", "c")
    assert r.code == 64 and r.err.startswith("Error (argument validation): too many arguments.")
    r = ctl(node, "no_such_command")
    assert r.code == 64 and "Command 'no_such_command' not found." in r.err
    r = ctl(node, "list_users", "--bogus-option")
    assert r.code == 64 and "Invalid options for this command" in r.err
    r = ctl(node, "list_users", "--formatter", "xml")
    assert r.code == 64
    r = ctl(node, "-t", "0", "list_queues")
    assert (r.out, r.err, r.code) == (
        "", f"Error: operation list_queues on node {node.name} timed out. Timeout value used: 0\n", 75)


def test_wrong_cookie_is_refused_and_logged_once(node: NodeProcess) -> None:
    before = node.log_text().count("refused: the cookie differs")
    r = ctl(node, "list_users", cookie="NOTTHECOOKIE")
    assert r.code == 69 and r.out == ""
    assert r.err.startswith(f"Error: unable to perform an operation on node '{node.name}'.")
    assert f"attempted to contact: [{node.name}]" in r.err
    assert f"TCP connection to localhost:{node.dist_port} succeeded but authentication failed" in r.err
    assert f"Cookie hash: {cookie_hash('NOTTHECOOKIE')}" in r.err
    assert "NOTTHECOOKIE" not in r.err and node.cookie not in r.err
    wait_until(lambda: node.log_text().count("refused: the cookie differs") == before + 1)
    line = [x for x in node.log_text().splitlines() if "refused: the cookie differs" in x][-1]
    assert "connection attempt from node 'leveretctl-" in line and "authentication failed" in line
    assert node.cookie not in node.log_text()
    # The wrong name for the node is refused too.
    r = ctl(node, "list_users", node_name="other@localhost")
    assert r.code == 69 and "wanted node 'other@localhost'" in r.err


def test_unreachable_node() -> None:
    port = free_port()
    node = NodeProcess(name="gone@localhost")
    r = ctl(node, "list_users", port=port)
    assert r.code == 69 and r.out == ""
    assert "Error: unable to perform an operation on node 'gone@localhost'." in r.err
    assert f"TCP connection to localhost:{port} failed" in r.err
    assert "suggestion: start the node" in r.err
    assert f"Cookie hash: {cookie_hash(node.cookie)}" in r.err


def test_stop_app_start_app_await_startup_and_stop(tmp_path: Path) -> None:
    # A node of its own, with the cookie in a file under $HOME rather than the environment.
    home = tmp_path / "home"
    home.mkdir()
    proc = CookieFileNode(name="life@localhost", extra_env={"HOME": str(home)}).start()
    try:
        cookie_file = home / ".leveret.cookie"
        assert cookie_file.stat().st_mode & 0o777 == 0o400
        proc.cookie = cookie_file.read_text().strip()
        assert len(proc.cookie) == 20
        # leveretctl finds the same file through $HOME.
        assert ctl(proc, "-q", "ping", cookie="", env={"HOME": str(home)}).lines == ["Ping succeeded"]

        client = pika.BlockingConnection(pika.URLParameters(proc.url))
        assert ok(proc, "stop_app").lines == [f"Stopping leveret application on node {proc.name} ..."]
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            client.process_data_events(1)
            client.process_data_events(1)
        assert closed.value.reply_code == 320
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            pika.BlockingConnection(pika.URLParameters(proc.url))
        r = ctl(proc, "list_queues")
        assert r.code == 64
        assert r.err.startswith("Error: this command requires the 'leveret' app to be running on the target node.")
        assert "Application running: false" in ok(proc, "status").lines
        assert ok(proc, "-q", "ping").code == 0

        assert ok(proc, "start_app").lines == [f"Starting node {proc.name} ..."]
        assert ok(proc, "await_startup").out == ""
        pika.BlockingConnection(pika.URLParameters(proc.url)).close()
        assert ok(proc, "-q", "list_vhosts").lines == ["name", "/"]

        assert ok(proc, "stop").lines == [f"Stopping and halting node {proc.name} ..."]
        assert proc.proc is not None
        assert proc.proc.wait(15) == 0
        r = ctl(proc, "ping")
        assert r.code == 69
    finally:
        proc.stop()


def test_cookie_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cookie_file = home / ".leveret.cookie"
    cookie_file.write_text("ABCDEFGHIJKLMNOPQRST")
    cookie_file.chmod(0o644)
    proc = CookieFileNode(name="badcookie@localhost", extra_env={"HOME": str(home)})
    with pytest.raises(RuntimeError):
        proc.start(timeout=15)
    assert f"Cookie file {cookie_file} must be accessible by owner only" in proc.log_text()
    proc.stop()
    # leveretctl refuses it the same way.
    r = ctl(proc, "ping", cookie="", env={"HOME": str(home)})
    assert r.code == 78 and r.err == f"Error: Cookie file {cookie_file} must be accessible by owner only\n"
