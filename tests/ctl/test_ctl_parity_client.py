"""leveretctl's client side against rabbitmqctl 3.10.8: what it prints before (or without)
asking a node. Every expected text here was printed by rabbitmqctl 3.10.8 for the same
arguments (with "rabbitmqctl" read as "leveretctl"); no node is needed."""

from __future__ import annotations

import json

import pytest

from cli.ctl import parse, run
from cli.ctl_commands import CATEGORIES, COMMANDS, QUEUE_ITEMS, permission_json_error, user_json_error
from cli.ctl_format import cell, csv_lines, json_rows

# An address where nothing listens: a test that reached the node would fail with exit 69.
NODE = ["-n", "nobody@localhost", "--port", "1"]


def test_unknown_options_are_all_listed_with_empty_values() -> None:
    # rabbitmqctl -n ref@localhost list_users --bogus --other y
    _, _, _, problems = parse(["list_users", "--bogus", "--other", "y"])
    assert problems == ["Invalid options for this command:\n--bogus : \n--other : "]
    # rabbitmqctl list_users -p  (a known option without its value)
    assert parse(["list_users", "-p"])[3] == ["Invalid options for this command:\n-p : "]
    # rabbitmqctl list_users -t abc  (a known option with a bad value shows the value)
    assert parse(["list_users", "-t", "abc"])[3] == ["Invalid options for this command:\n-t : abc"]


def test_unknown_option_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*NODE, "add_vhost", "v", "--bogus", "x"]) == 64
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "Error (argument validation): Invalid options for this command:\n--bogus : \nArguments given:\n"
        f"\t{' '.join(NODE)} add_vhost v --bogus x\n\nUsage\n\n"
        "leveretctl [--node <node>] [--longnames] [--quiet] add_vhost <vhost> [--description <description> "
        "--tags \"<tag1>,<tag2>,<...>\" --default-queue-type <quorum|classic|stream>]\n")


def test_unknown_info_keys_are_named_sorted(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*NODE, "list_queues", "name", "zeta", "alpha", "mid"]) == 64
    err = capsys.readouterr().err
    assert err.startswith("Error (argument validation): Info key(s) alpha,mid,zeta are not supported\n")
    assert err.endswith("list_queues [--vhost <vhost>] [--online] [--offline] [--local] [--no-table-headers] "
                        "[<column>, ...] [--timeout <timeout>]\n")


def test_list_queues_takes_exactly_rabbitmqs_info_keys(capsys: pytest.CaptureFixture[str]) -> None:
    # From `rabbitmqctl help list_queues` ("must be one of ...").
    rabbit = ("arguments, auto_delete, consumer_capacity, consumer_utilisation, consumers, disk_reads, disk_writes, "
              "durable, exclusive, exclusive_consumer_pid, exclusive_consumer_tag, head_message_timestamp, leader, "
              "members, memory, message_bytes, message_bytes_persistent, message_bytes_ram, message_bytes_ready, "
              "message_bytes_unacknowledged, messages, messages_persistent, messages_ram, messages_ready, "
              "messages_ready_ram, messages_unacknowledged, messages_unacknowledged_ram, name, online, owner_pid, "
              "pid, policy, slave_pids, state, synchronised_slave_pids, type").split(", ")
    assert sorted(QUEUE_ITEMS) == rabbit
    # Leveret once took these; rabbitmqctl refuses them.
    assert run([*NODE, "list_queues", "node", "single_active_consumer_tag"]) == 64
    assert "Info key(s) node,single_active_consumer_tag are not supported" in capsys.readouterr().err
    assert set(COMMANDS["list_queues"].options) == {"--online", "--offline", "--local"}


@pytest.mark.parametrize("command, usage", [
    ("list_channels", "list_channels [--no-table-headers] [<column> ...]"),
    ("purge_queue", "purge_queue <queue> [--timeout <timeout>]"),
    ("delete_queue", "delete_queue <queue_name> [--if-empty|-e] [--if-unused|-u] [--timeout <timeout>]"),
    ("ping", "ping [--timeout <timeout>]"),
    ("add_user", "add_user <username> <password>"),
])
def test_usage_lines(command: str, usage: str) -> None:
    assert COMMANDS[command].usage == usage


def test_help_lists_commands_by_group_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["help"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    lines = captured.out.splitlines()
    assert lines[:9] == ["", "Usage", "",
                         "leveretctl [--node <node>] [--timeout <timeout>] [--longnames] [--quiet] <command> "
                         "[<command options>]", "", "Available commands:", "", "Help:", ""]
    assert lines[-1] == "Use 'leveretctl help <command>' to learn more about a specific command"
    # One line per command: a summary's later lines (list_queues' columns) stay out of the listing.
    assert not any(line.startswith("Columns:") for line in lines)
    assert "Users:" in lines and "Access Control:" in lines and "Queues:" in lines
    assert lines.index("   list_vhosts                   Lists virtual hosts") > lines.index("Access Control:")
    assert run(["--help"]) == 0 and capsys.readouterr().out == captured.out


def test_every_command_is_in_one_group() -> None:
    grouped = [name for _group, names in CATEGORIES for name in names]
    assert sorted(grouped) == sorted(COMMANDS)


def test_help_for_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # rabbitmqctl help nosuch
    assert run(["help", "nosuch"]) == 64
    assert capsys.readouterr() == ("", "Error:\n\nCommand 'nosuch' not found.\n")


def test_unknown_command_and_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*NODE, "nosuchcmd"]) == 64
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("\nCommand 'nosuchcmd' not found. \n\nUsage\n\n")
    assert run([]) == 64
    assert capsys.readouterr().err.startswith("\nUsage\n\n")


def test_command_help_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*NODE, "list_users", "--help"]) == 0
    out = capsys.readouterr().out
    assert "leveretctl [--node <node>] [--longnames] [--quiet] list_users [--no-table-headers] " \
           "[--timeout <timeout>]" in out


def test_password_missing_from_arguments_and_stdin(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    # rabbitmqctl add_user u < /dev/null: the banner, the prompt, then exit 65;
    # change_password and authenticate_user exit 70 for the same thing.
    for command, code in (("add_user", 65), ("change_password", 70), ("authenticate_user", 70)):
        monkeypatch.setattr("sys.stdin", io.StringIO(""))
        assert run([*NODE, command, "someone"]) == code
        out, err = capsys.readouterr()
        assert out.endswith('"someone" ...\nPassword: \n')
        assert err == "Error:\nPassword is not provided via argument or stdin\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert run([*NODE, "-q", "add_user", "someone"]) == 65
    assert capsys.readouterr().out == ""


def test_csv_formatter() -> None:
    # rabbitmqctl list_bindings --formatter csv
    rows = [{"source_name": "h", "routing_key": "", "arguments": [["k", "signedint", 1], ["x-match", "longstr", "any"]]}]
    assert csv_lines(rows, ("source_name", "routing_key", "arguments")) == [
        '"source_name","routing_key","arguments"', '"h","","[{""k"",1},{""x-match"",""any""}]"']
    assert csv_lines([], ("name",)) == []
    assert csv_lines([{"tags": ["a", "b"], "durable": False}], ("tags", "durable"))[1] == '"[a, b]","false"'


def test_empty_json_listing_streamed_or_not() -> None:
    # list_queues (streamed) prints "[\n]" for no rows; list_permissions prints "[]".
    assert json_rows([], ("name",), streamed=True) == "[\n]"
    assert json_rows([], ("name",)) == "[]"


def test_protocol_cell_is_an_erlang_tuple() -> None:
    assert cell("protocol", [0, 9, 1]) == "{0,9,1}"
    assert json.loads(json_rows([{"protocol": [0, 9, 1]}], ("protocol",))) == [{"protocol": [0, 9, 1]}]


def test_json_error_messages() -> None:
    # {"message":"User u does not exists",...} (sic) from delete_user, change_password, set_user_tags.
    assert user_json_error('User "u" does not exist') == "User u does not exists"
    assert user_json_error('User "u" already exists') == "User u already exists"
    assert user_json_error("Virtual host 'v' does not exist") is None
    assert permission_json_error("User u does not exist") == "User u does not exist"
    assert permission_json_error("Virtual host v does not exist") == "Virtual host v does not exist"
    assert permission_json_error("{:invalid_regexp, '(', {'missing )', 1}}") is None


@pytest.mark.parametrize("value, text", [
    # As rabbitmqctl 3.10.8 printed them in `status --unit ...`.
    (50.0, "50.0"), (50000.0, "5.0e4"), (0.0001, "0.0001"), (0.05, "0.05"), (128827.392, "128827.392"),
    (10110600.806, "10110600.806"), (100.0, "100.0"), (1000.0, "1.0e3"), (0.0, "0.0"),
])
def test_floats_print_as_erlang_prints_them(value: float, text: str) -> None:
    from cli.ctl_commands import erlang_float

    assert erlang_float(value) == text


def test_status_unit_is_validated_before_asking_the_node(capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*NODE, "status", "--unit", "kib"]) == 64
    err = capsys.readouterr().err
    assert err.startswith("Error (argument validation): \"unit 'kib' is not supported. Please use one of: bytes, "
                          "mb, gb\"\nArguments given:\n")
    assert err.endswith("status [--unit <unit>] [--timeout <timeout>]\n")


def test_status_lines_follow_rabbitmqctl() -> None:
    from cli.ctl_commands import _status_lines, status_json

    status = {
        "pid": 1, "os": "Linux", "uptime": 2, "product_name": "Leveret", "product_version": "0.1.0",
        "node_name": "n@h", "runtime": "Python 3.11.7 (cpython)", "python_version": "3.11.7", "app_running": True,
        "data_directory": "/d", "config_files": [], "alarms": ["memory"], "memory_used": 128438272,
        "memory_calculation_strategy": "rss", "vm_memory_high_watermark": {"relative": 0.4},
        "vm_memory_limit": 10110600806, "disk_free_limit": 50000000, "disk_free": 83561361408,
        "file_descriptors": 8, "file_descriptor_limit": 19903, "connection_count": 0, "queue_count": 0,
        "virtual_host_count": 1,
        "listeners": [{"node": "n@h", "protocol": "clustering", "interface": "::", "port": 25672,
                       "purpose": "inter-node and CLI tool communication"}],
    }
    lines = _status_lines(status, "mb")
    # No config file: an empty section, not "(none)"; alarms without bullets.
    assert lines[lines.index("Config files"):lines.index("Config files") + 6] == [
        "Config files", "", "", "Alarms", "", "Memory alarm on node n@h"]
    assert "Memory high watermark setting: 0.4 of available memory, computed to: 10110.6008 mb" in lines
    assert "Low free disk space watermark: 50.0 mb" in lines
    assert lines.index("File Descriptors") < lines.index("Free Disk Space")
    assert "Total: 8, limit: 19903" in lines
    assert lines[-1] == ("Interface: [::], port: 25672, protocol: clustering, "
                         "purpose: inter-node and CLI tool communication")
    assert "Total memory used: 128438272 bytes" in _status_lines(status, "bytes")
    shaped = status_json(status)
    assert shaped["alarms"] == [{"node": "n@h", "resource": "memory", "type": "resource_limit"}]
    assert shaped["listeners"][0]["interface"] == "[::]"
    assert shaped["totals"] == {"connection_count": 0, "queue_count": 0, "virtual_host_count": 1}
    assert shaped["vm_memory_high_watermark_setting"] == {"relative": 0.4}
    assert shaped["file_descriptors"] == {"total_limit": 19903, "total_used": 8}


def test_timeout_is_whole_seconds() -> None:
    # rabbitmqctl list_queues -t 2.5: "Invalid options for this command:\n-t : 2.5", exit 64.
    assert parse(["list_queues", "-t", "2.5"])[3] == ["Invalid options for this command:\n-t : 2.5"]
    assert parse(["list_queues", "--timeout=5"])[2].timeout == 5.0


def test_no_table_headers_only_with_the_table_formatter_of_a_listing() -> None:
    # rabbitmqctl list_users --formatter json --no-table-headers --bogus
    assert parse(["list_users", "--formatter", "json", "--no-table-headers", "--bogus"])[3] == [
        "Invalid options for this command:\n--no-table-headers : \n--bogus : "]
    # rabbitmqctl list_users --no-table-headers --formatter csv (the formatter given after it)
    assert parse(["list_users", "--no-table-headers", "--formatter", "csv"])[3] == [
        "Invalid options for this command:\n--no-table-headers : "]
    # rabbitmqctl add_vhost v --no-table-headers
    assert parse(["add_vhost", "v", "--no-table-headers"])[3] == [
        "Invalid options for this command:\n--no-table-headers : "]
    assert parse(["list_users", "--no-table-headers"])[3] == []


@pytest.mark.parametrize("args, code, problem", [
    # rabbitmqctl 3.10.8's answers; none of these reaches the node.
    (["set_vm_memory_high_watermark"], 64, "not enough arguments."),
    (["set_vm_memory_high_watermark", "absolute"], 64, "not enough arguments."),
    (["set_vm_memory_high_watermark", "absolute", "1", "2"], 64, "too many arguments."),
    (["set_vm_memory_high_watermark", "a", "b"], 64, "too many arguments."),
    (["set_vm_memory_high_watermark", "abc"], 65, "Bad argument."),
    (["set_vm_memory_high_watermark", "-1"], 65, "Bad argument: The threshold should be a fraction between 0.0 and 1.0"),
    (["set_vm_memory_high_watermark", "absolute", "abc"], 65, "Bad argument."),
    (["set_vm_memory_high_watermark", "absolute", "10XB"], 65, "Bad argument: Invalid units."),
    (["set_disk_free_limit"], 64, "not enough arguments."),
    (["set_disk_free_limit", "mem_relative"], 64, "not enough arguments."),
    (["set_disk_free_limit", "a", "b"], 64, "too many arguments."),
    (["set_disk_free_limit", "mem_relative", "-1"], 65, "Bad argument."),
    (["set_disk_free_limit", "10XB"], 65, "Bad argument."),
])
def test_resource_limit_argument_errors(args: list[str], code: int, problem: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*NODE, *args]) == code
    assert capsys.readouterr().err.startswith(f"Error (argument validation): {problem}\nArguments given:\n")


def test_negative_numbers_are_arguments() -> None:
    command, positional, _, problems = parse(["set_disk_free_limit", "mem_relative", "-1"])
    assert (command, positional, problems) == ("set_disk_free_limit", ["mem_relative", "-1"], [])


def test_close_all_connections_usage() -> None:
    assert COMMANDS["close_all_connections"].usage == (
        "close_all_connections [--vhost <vhost> --limit <limit>] [-n <node> --global] "
        "[--per-connection-delay <delay>] <explanation>")


def test_argument_tables_of_every_field_type() -> None:
    """As rabbitmqctl 3.10.8 showed a queue declared by pika with these arguments."""
    import datetime
    import decimal

    from broker.control_handlers import typed_table

    arguments = {"x-bool": True, "x-int": 2 ** 40, "x-neg": -5, "x-str": 'sé"q', "x-list": [1, "a", True],
                 "x-table": {"a": 1, "b": {"c": "d"}}, "x-bytes": b"raw", "x-none": None,
                 "x-dec": decimal.Decimal("1.25"), "x-ts": datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)}
    row = {"name": "q", "arguments": typed_table(arguments)}
    assert cell("arguments", row["arguments"]) == (
        '[{"x-bool",true},{"x-int",1099511627776},{"x-neg",-5},{"x-str","sé\\"q"},{"x-list",[1,"a",true]},'
        '{"x-table",[{"a",1},{"b",[{"c","d"}]}]},{"x-bytes",<<"raw">>},{"x-none",undefined},{"x-dec",{2,125}},'
        '{"x-ts",1577836800}]')
    assert json_rows([row], ("name", "arguments")) == (
        '[\n{"name":"q","arguments":[["x-bool","bool",true],["x-int","long",1099511627776],'
        '["x-neg","signedint",-5],["x-str","longstr","sé\\"q"],'
        '["x-list","array",{"signedint":1,"longstr":"a","bool":true}],'
        '["x-table","table",[["a","signedint",1],["b","table",[["c","longstr","d"]]]]],'
        '["x-bytes","binary","raw"],["x-none","void","undefined"],["x-dec","decimal",[2,125]],'
        '["x-ts","timestamp",1577836800]]}\n]')


def test_version_needs_no_node(capsys: pytest.CaptureFixture[str]) -> None:
    from broker import __version__

    # rabbitmqctl -n nosuch@localhost version: "3.10.8", exit 0.
    assert run([*NODE, "version"]) == 0
    assert capsys.readouterr() == (f"{__version__}\n", "")
    assert run([*NODE, "version", "--formatter", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"node": "nobody@localhost", "result": "ok",
                                                   "value": {"version": __version__}}


def test_connection_addresses_in_json_are_erlang_tuples() -> None:
    # rabbitmqctl list_connections host peer_host --formatter json: "host":[127,0,0,1]; the table shows 127.0.0.1.
    rows = [{"host": "127.0.0.1", "peer_host": "::1"}]
    assert json.loads(json_rows(rows, ("host", "peer_host"))) == [{"host": [127, 0, 0, 1],
                                                                   "peer_host": [0, 0, 0, 0, 0, 0, 0, 1]}]
    assert cell("host", "127.0.0.1") == "127.0.0.1"


@pytest.mark.parametrize("typed, suggestion", [
    # rabbitmqctl 3.10.8: "Command 'list_queue' not found. \nDid you mean 'list_queues'? "
    ("list_queue", "list_queues"), ("lst_users", "list_users"), ("add_usr", "add_user"), ("stat", "status"),
    ("purge", "purge_queue"), ("delete", "delete_user"), ("status_", "status"),
    # ... and no suggestion, but the command listing, for these.
    ("lis", None), ("LIST_USERS", None), ("zzzz", None),
])
def test_unknown_command_suggestion(typed: str, suggestion: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    assert run([*NODE, typed]) == 64
    err = capsys.readouterr().err
    if suggestion is None:
        assert err.startswith(f"\nCommand '{typed}' not found. \n\nUsage\n")
    else:
        assert err == f"\nCommand '{typed}' not found. \nDid you mean '{suggestion}'? \n\n"


def test_jaro() -> None:
    from cli.ctl import jaro

    assert jaro("stat", "status") == pytest.approx(8 / 9)
    assert jaro("martha", "marhta") == pytest.approx(0.9444, abs=1e-4)
    assert jaro("abc", "xyz") == 0.0


def test_ping_of_a_node_that_is_not_there(capsys: pytest.CaptureFixture[str]) -> None:
    # rabbitmqctl -n nosuch@localhost ping -t 3: its banner, then this, exit 69 (no diagnostics).
    assert run([*NODE, "ping", "-t", "3"]) == 69
    out, err = capsys.readouterr()
    assert out.startswith("Will ping nobody@localhost. ") and out.endswith(" Timeout: 3000 ms.\n")
    assert err == "Error:\nFailed to connect and authenticate to nobody@localhost in 3000 ms\n"
    assert run([*NODE, "-q", "ping", "-t", "3"]) == 69
    assert capsys.readouterr() == ("", "Error:\nFailed to connect and authenticate to nobody@localhost in 3000 ms\n")


def test_a_node_name_without_host_gets_this_hosts_short_name() -> None:
    import socket

    # rabbitmqctl -n ref list_users contacts ref@<short hostname>.
    assert parse(["-n", "ref", "list_users"])[2].node == f"ref@{socket.gethostname().split('.')[0]}"
    assert parse(["-n", "ref@elsewhere", "list_users"])[2].node == "ref@elsewhere"


def test_single_letter_options_run_together() -> None:
    # rabbitmqctl -qs list_vhosts: quiet and silent.
    _, _, opts, problems = parse(["-qs", "list_vhosts"])
    assert (opts.quiet, opts.silent, problems) == (True, True, [])
    # rabbitmqctl list_vhosts -pctlprobe: each letter an option, -p and -t without their values.
    assert parse(["list_vhosts", "-pctlprobe"])[3] == [
        "Invalid options for this command:\n-p : \n-c : \n-t : \n-p : \n-r : \n-o : \n-b : \n-e : "]
    # rabbitmqctl delete_queue q -eu: --if-empty and --if-unused.
    _, positional, opts, problems = parse(["delete_queue", "q", "-eu"])
    assert (positional, opts.command_options, problems) == (["q"], {"e": True, "u": True}, [])


def test_double_dash_before_the_command() -> None:
    assert parse(["-q", "--", "list_users"])[:2] == ("list_users", [])
    assert parse(["add_user", "u", "--", "-pw"])[:2] == ("add_user", ["u", "-pw"])
