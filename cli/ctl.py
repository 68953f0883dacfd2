"""`leveretctl`: rabbitmqctl's commands, arguments, output shapes and exit codes, for Leveret.

    leveretctl [-n NODE] [--port PORT] [-q] [-s] [-t SECONDS] [-p VHOST]
               [--formatter table|json] [--no-table-headers] COMMAND [ARGS...]

Options may come before or after the command, as with rabbitmqctl. The node
is `-n` (default $LEVERET_NODENAME, else leveret@<short hostname>); it is
reached at the host part of its name, on `--port` (default
$LEVERET_DIST_PORT, else the port the host's port mapper has for it, else 25672),
and the cookie is $LEVERET_COOKIE or
~/.leveret.cookie. Each command is one authenticated control request
(`cluster.control`); the node answers with data or with RabbitMQ's error text
and the exit code rabbitmqctl uses (64 usage, 65 data, 67 no such user, 69
unavailable, 70 software, 75 timeout).

The command table is `cli.ctl_commands`; cell and JSON rendering is
`cli.ctl_format`.
"""

from __future__ import annotations

import os
import re
import socket
from functools import partial
import sys
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any, NoReturn

import trio

from cluster.control import (
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_UNAVAILABLE,
    EX_USAGE,
    client_name,
    control_call,
)
from cli.ctl_format import json_value
from cluster.cookie import CookieError, cookie_hash, load_cookie
from cluster.peer import HandshakeFailed, PeerClosed, PeerWireError, RemoteError

DEFAULT_DIST_PORT = 25672
EX_CONFIG = 78
GLOBAL_USAGE = "leveretctl [--node <node>] [--longnames] [--quiet]"
# The command listing's usage line also names --timeout, as rabbitmqctl's does.
GLOBAL_USAGE_ALL = "leveretctl [--node <node>] [--timeout <timeout>] [--longnames] [--quiet]"


class Exit(Exception):
    """Stop with this exit code (whatever had to be printed has been)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Options:
    node: str
    port: int | None  # None until looked up (`mapped_port`): --port or $LEVERET_DIST_PORT win
    quiet: bool = False
    silent: bool = False
    timeout: float | None = None
    vhost: str = "/"
    formatter: str = "table"
    headers: bool = True
    cookie: str | None = None
    help: bool = False
    command_options: dict[str, Any] = field(default_factory=dict)


def default_node() -> str:
    return os.environ.get("LEVERET_NODENAME") or f"leveret@{socket.gethostname().split('.')[0]}"


def default_port() -> int | None:
    """$LEVERET_DIST_PORT, or None: the node's port is then asked of its host's port mapper."""
    value = os.environ.get("LEVERET_DIST_PORT", "")
    return int(value) if value.isdigit() else None


def mapped_port(node: str) -> int:
    """The peer port the port mapper on `node`'s host has for it (as rabbitmqctl asks epmd),
    else 25672."""
    from cluster.portmapper import DEFAULT_PORT_MAPPER_PORT, resolve_control_port

    value = os.environ.get("LEVERET_PORT_MAPPER_PORT", "")
    mapper = int(value) if value.isdigit() else DEFAULT_PORT_MAPPER_PORT
    return trio.run(partial(resolve_control_port, node, None, mapper_port=mapper, default_port=DEFAULT_DIST_PORT))


class Context:
    """What a command sees: the parsed options, output helpers and `call`."""

    def __init__(self, options: Options, command: str, argv: list[str]) -> None:
        self.options = options
        self.command = command
        self.argv = argv
        # Banners wait for the node's first answer: an unreachable node gets diagnostics only.
        self._pending: list[str] | None = []
        # A command's own text for a node that cannot be reached or does not answer in time
        # (ping's), printed after its banner instead of the diagnostics, with exit 69.
        self.unreachable: str | None = None

    # ------------------------------------------------------------------ output

    def info(self, text: str) -> None:
        """An informational line, suppressed by -q / -s."""
        # rabbitmqctl's JSON and CSV formatters print nothing but the document.
        if self.options.quiet or self.options.silent or self.options.formatter != "table":
            return
        if self._pending is not None:
            self._pending.append(text)
        else:
            print(text, flush=True)

    def _flush_banners(self) -> None:
        if self._pending:
            print("\n".join(self._pending), flush=True)
        self._pending = None

    def out(self, text: str) -> None:
        self._flush_banners()
        print(text, flush=True)

    def error(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def usage_error(self, problem: str, code: int = EX_USAGE) -> NoReturn:
        from cli.ctl_commands import COMMANDS

        self.error(f"Error (argument validation): {problem}")
        self._usage_tail(COMMANDS[self.command].usage if self.command in COMMANDS else "<command>")
        raise Exit(code)

    def _usage_tail(self, usage: str) -> None:
        self.error("Arguments given:\n\t" + " ".join(self.argv) + "\n\nUsage\n")
        self.error(f"{GLOBAL_USAGE} {usage}")

    # ------------------------------------------------------------------ calls

    @property
    def host(self) -> str:
        return self.options.node.split("@", 1)[1] if "@" in self.options.node else "localhost"

    def call(self, method: str, args: dict[str, Any] | None = None, *, timeout: float | None = None,
             json_error: Callable[[str], str | None] | None = None) -> Any:
        """One control request; the result, or (printing rabbitmqctl's error) Exit.

        `json_error` maps a refusal's text to the message rabbitmqctl's JSON formatter
        prints instead (`{"message":...,"node":...,"result":"error"}`, exit 69), for the
        refusals whose command formats them so; None leaves the refusal as it is."""
        opts = self.options
        cookie = opts.cookie or self._cookie()
        limit = timeout if timeout is not None else opts.timeout

        async def run() -> Any:
            if limit is None:
                return await control_call(self.host, opts.port, opts.node, method, args or {}, cookie=cookie)
            with trio.move_on_after(limit):
                return await control_call(self.host, opts.port, opts.node, method, args or {}, cookie=cookie,
                                          connect_timeout=max(limit, 0.001))
            return _TIMED_OUT

        try:
            reply = trio.run(run)
        except HandshakeFailed as exc:
            self._diagnostics(cookie, f"TCP connection to {self.host}:{opts.port} succeeded but authentication "
                                      f"failed: {exc.refusal.reason}", [
                "check if the cookie is identical for all server nodes and CLI tools",
                "check if all server nodes and CLI tools use consistent hostnames when addressing each other",
            ])
        except trio.TooSlowError:
            self._diagnostics(cookie, f"no TCP connection to {self.host}:{opts.port} within the timeout",
                              ["check the node's address, port and firewall"])
        except OSError as exc:
            self._diagnostics(cookie, f"TCP connection to {self.host}:{opts.port} failed: "
                                      f"{exc.strerror or exc}", ["start the node"])
        except (PeerClosed, PeerWireError, trio.BrokenResourceError) as exc:
            # Authenticated, then the link broke before the answer (the node stopped,
            # or sent something that is not a reply): no answer is not an answer.
            self._diagnostics(cookie, f"connection to {self.host}:{opts.port} lost before the node answered: "
                                      f"{exc or type(exc).__name__}", ["check the node's log"])
        except RemoteError as exc:
            self._flush_banners()
            self.error(f"Error:\nInternal error on node {opts.node}: {exc}")
            raise Exit(EX_SOFTWARE) from None
        if reply is _TIMED_OUT:
            if self.unreachable is not None:
                self._unreachable()
            shown = int((limit or 0) * 1000) if limit else 0
            self.error(f"Error: operation {self.command} on node {opts.node} timed out. Timeout value used: {shown}")
            raise Exit(EX_TEMPFAIL)
        if reply.get("ok"):
            self._flush_banners()
            return reply.get("result")
        code = reply.get("exit_code")
        self._refused(str(reply.get("error")), code if type(code) is int and 0 < code < 256 else EX_SOFTWARE,
                      json_error)

    def _refused(self, text: str, code: int, json_error: Callable[[str], str | None] | None = None) -> NoReturn:
        from cli.ctl_commands import COMMANDS

        if text.startswith("this command requires"):
            # rabbitmqctl checks that the app runs before it prints a banner.
            self._pending = None
        else:
            self._flush_banners()
        message = json_error(text) if json_error is not None and self.options.formatter == "json" else None
        if message is not None:
            self.error(json_value({"message": message, "node": self.options.node, "result": "error"}))
            raise Exit(EX_UNAVAILABLE)
        if text.startswith("this command requires"):
            self.error(f"Error: {text}")
            self._usage_tail(COMMANDS[self.command].usage)
        elif text.startswith(("Error: operation", "Virtual host '")):
            self.error(text)
        else:
            self.error(f"Error:\n{text}")
        raise Exit(code)

    def _cookie(self) -> str:
        try:
            return load_cookie(os.environ, Path.home())
        except CookieError as exc:
            self.error(f"Error: {exc}")
            raise Exit(EX_CONFIG) from None

    def _unreachable(self) -> NoReturn:
        assert self.unreachable is not None
        self._flush_banners()
        self.error(f"Error:\n{self.unreachable}")
        raise Exit(EX_UNAVAILABLE)

    def _diagnostics(self, cookie: str, what: str, suggestions: list[str]) -> NoReturn:
        if self.unreachable is not None:
            self._unreachable()
        node = self.options.node
        lines = [
            f"Error: unable to perform an operation on node '{node}'. "
            "Please see diagnostics information and suggestions below.",
            "",
            "Most common reasons for this are:",
            "",
            " * Target node is unreachable (e.g. due to hostname resolution, TCP connection or firewall issues)",
            " * CLI tool fails to authenticate with the server (e.g. due to CLI tool's cookie not matching "
            "that of the server)",
            " * Target node is not running",
            "",
            "In addition to the diagnostics info below:",
            "",
            " * See docs/cli.md to learn more",
            f" * Consult server logs on node {node}",
            "",
            "DIAGNOSTICS",
            "===========",
            "",
            f"attempted to contact: [{node}]",
            "",
            f"{node}:",
            f"  * {what}",
            *[f"  * suggestion: {s}" for s in suggestions],
            "",
            "Current node details:",
            f" * node name: '{client_name()}'",
            f" * effective user's home directory: {Path.home()}",
            f" * Cookie hash: {cookie_hash(cookie)}",
            "",
        ]
        self.error("\n".join(lines))
        raise Exit(EX_UNAVAILABLE)


_TIMED_OUT: Any = object()

# Global options: name -> (attribute, takes a value).
_GLOBAL = {
    "-n": ("node", True), "--node": ("node", True),
    "--port": ("port", True),
    "-q": ("quiet", False), "--quiet": ("quiet", False),
    "-s": ("silent", False), "--silent": ("silent", False),
    "-t": ("timeout", True), "--timeout": ("timeout", True),
    "-p": ("vhost", True), "--vhost": ("vhost", True),
    "--formatter": ("formatter", True),
    "--no-table-headers": ("no_headers", False),
    "-l": ("longnames", False), "--longnames": ("longnames", False),
    "--cookie": ("cookie", True), "--erlang-cookie": ("cookie", True),
    "-?": ("help", False), "--help": ("help", False),
}

FORMATTERS = ("table", "json", "csv")
_NUMBER = re.compile(r"-\d+(\.\d+)?")


def parse(argv: list[str]) -> tuple[str | None, list[str], Options, list[str]]:
    """(command, positional args, options, problems). Options may appear anywhere.

    Every option rabbitmqctl would refuse is collected into one problem, one `name : value`
    line each, as its parser reports them: an unknown option or one missing its value shows
    an empty value (`--bogus : `), a known one with a bad value shows that value."""
    from cli.ctl_commands import COMMANDS

    opts = Options(node=default_node(), port=default_port())
    positional: list[str] = []
    invalid: list[str] = []
    no_headers_at: int | None = None  # where --no-table-headers falls among the invalid options
    command: str | None = None
    argv = list(argv)
    # Single-letter options run together ("-qs") stand for each letter in turn, as Elixir's
    # OptionParser reads them; one that takes a value gets none inside such a run.
    cluster_end = 0
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if (i > cluster_end and len(token) > 2 and token[0] == "-" and token[1] != "-"
                and not _NUMBER.fullmatch(token)):
            argv[i - 1:i] = [f"-{letter}" for letter in token[1:]]
            cluster_end = i - 1 + len(token) - 1
            token = argv[i - 1]
        in_cluster = i <= cluster_end
        if token == "--":
            rest = argv[i:]
            if command is None and rest:
                command, rest = rest[0], rest[1:]
            positional += rest
            break
        # A negative number is an argument, not an option (as Elixir's OptionParser sees it).
        if not token.startswith("-") or token == "-" or len(token) == 1 or _NUMBER.fullmatch(token):
            if command is None:
                command = token
            else:
                positional.append(token)
            continue
        name, eq, inline = token.partition("=")
        spec = COMMANDS.get(command or "")
        cmd_options = spec.options if spec else {}
        if name in cmd_options:
            kind = cmd_options[name]
            key = name.lstrip("-").replace("-", "_")
            if kind == "flag":
                opts.command_options[key] = True
                continue
            if not eq:
                if in_cluster:
                    invalid.append(f"{name} : ")
                    continue
                if i >= len(argv):
                    invalid.append(f"{name} : ")
                    break
                inline = argv[i]
                i += 1
            if kind == "int":
                try:
                    opts.command_options[key] = int(inline)
                except ValueError:
                    invalid.append(f"{name} : {inline}")
                continue
            opts.command_options[key] = inline
            continue
        if name not in _GLOBAL:
            invalid.append(f"{name} : ")
            continue
        attr, takes_value = _GLOBAL[name]
        if not takes_value:
            if attr == "no_headers":
                opts.headers = False
                no_headers_at = len(invalid)
            elif attr == "help":
                opts.help = True
            elif attr != "longnames":
                setattr(opts, attr, True)
            continue
        if not eq:
            if in_cluster:
                invalid.append(f"{name} : ")
                continue
            if i >= len(argv):
                invalid.append(f"{name} : ")
                break
            inline = argv[i]
            i += 1
        if attr == "port":
            if not (inline.isdigit() and 0 < int(inline) < 65536):
                invalid.append(f"{name} : {inline}")
            else:
                opts.port = int(inline)
        elif attr == "timeout":
            # Whole seconds, as rabbitmqctl's parser takes them: 2.5 is refused like "abc".
            # (rabbitmqctl crashes on a negative one; Leveret refuses it as well.)
            if inline.isascii() and inline.isdigit():
                opts.timeout = float(int(inline))
            else:
                invalid.append(f"{name} : {inline}")
        elif attr == "vhost":
            opts.vhost = inline
        elif attr == "formatter":
            if inline not in FORMATTERS:
                # rabbitmqctl crashes on an unknown formatter (exit 1, an Elixir trace);
                # a usage error naming the supported ones serves a script as well.
                invalid.append(f"--formatter : {inline} (supported: {', '.join(FORMATTERS)})")
            opts.formatter = inline
        else:
            setattr(opts, attr, inline)
    # --no-table-headers belongs to the table formatter of the listing commands: rabbitmqctl
    # refuses it with --formatter json or csv, and from commands that print no table.
    spec = COMMANDS.get(command or "")
    if no_headers_at is not None and (opts.formatter != "table" or spec is None
                                      or "--no-table-headers" not in spec.usage):
        invalid.insert(no_headers_at, "--no-table-headers : ")
    problems = ["Invalid options for this command:\n" + "\n".join(invalid)] if invalid else []
    if "@" not in opts.node:
        # rabbitmqctl -n rabbit means rabbit@<this host's short name>.
        opts.node = f"{opts.node}@{socket.gethostname().split('.')[0]}"
    return command, positional, opts, problems


def jaro(a: str, b: str) -> float:
    """Jaro similarity (Elixir's String.jaro_distance), what rabbitmqctl ranks suggestions by."""
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    window = max(max(len(a), len(b)) // 2 - 1, 0)
    a_matched = [False] * len(a)
    b_matched = [False] * len(b)
    matches = 0
    for i, ch in enumerate(a):
        for j in range(max(0, i - window), min(len(b), i + window + 1)):
            if not b_matched[j] and b[j] == ch:
                a_matched[i] = b_matched[j] = True
                matches += 1
                break
    if not matches:
        return 0.0
    a_seq = [ch for ch, m in zip(a, a_matched) if m]
    b_seq = [ch for ch, m in zip(b, b_matched) if m]
    transpositions = sum(x != y for x, y in zip(a_seq, b_seq)) // 2
    return (matches / len(a) + matches / len(b) + (matches - transpositions) / matches) / 3


# How similar a typed name must be to a command's for rabbitmqctl to suggest it ("shu"
# gets "shutdown" at 0.79, "lis" nothing at 0.77 or less).
SUGGESTION_THRESHOLD = 0.77


def suggest_command(typed: str, commands: Any) -> str | None:
    """The most similar command name, if similar enough: rabbitmqctl's "Did you mean"."""
    best = max(commands, key=lambda name: jaro(name, typed), default=None)
    if best is None or jaro(best, typed) < SUGGESTION_THRESHOLD:
        return None
    return str(best)


def command_listing() -> str:
    """`leveretctl help`: the commands grouped as rabbitmqctl 3.10 groups them, one line each."""
    from cli.ctl_commands import CATEGORIES, COMMANDS

    lines = ["", "Usage", "", f"{GLOBAL_USAGE_ALL} <command> [<command options>]", "", "Available commands:", "",
             # `help` is answered by `run` itself, before any command is looked up.
             "Help:", "", f"   {'help':<30}Displays usage information for a command"]
    for category, names in CATEGORIES:
        if category != "Help":
            lines += ["", f"{category}:", ""]
        lines += [f"   {name:<30}{COMMANDS[name].summary.splitlines()[0]}" for name in names]
    lines += ["", "Use 'leveretctl help <command>' to learn more about a specific command"]
    return "\n".join(lines)


def command_help(name: str) -> str:
    from cli.ctl_commands import COMMANDS

    spec = COMMANDS[name]
    return f"\nUsage\n\n{GLOBAL_USAGE} {spec.usage}\n\n{spec.summary}\n"


def run(argv: list[str]) -> int:
    from cli.ctl_commands import COMMANDS

    command, positional, opts, problems = parse(argv)
    shown_argv = ["-n", opts.node, *argv] if "-n" not in argv and "--node" not in argv else list(argv)
    # rabbitmqctl: `help` and `--help` answer on stdout with 0; no command at all, or an
    # unknown one (also as `help <name>`), is a usage error on stderr with 64.
    if command == "help" or (command is None and opts.help):
        if not positional:
            print(command_listing())
            return 0
        if positional[0] not in COMMANDS:
            print(f"Error:\n\nCommand '{positional[0]}' not found.", file=sys.stderr)
            return EX_USAGE
        print(command_help(positional[0]))
        return 0
    if command is None:
        print(command_listing(), file=sys.stderr)
        return EX_USAGE
    spec = COMMANDS.get(command)
    if spec is None:
        suggestion = suggest_command(command, COMMANDS)
        if suggestion is not None:
            print(f"\nCommand '{command}' not found. \nDid you mean '{suggestion}'? \n", file=sys.stderr)
        else:
            print(f"\nCommand '{command}' not found. \n{command_listing()}", file=sys.stderr)
        return EX_USAGE
    if opts.help:
        print(command_help(command))
        return 0
    if opts.port is None:
        opts.port = mapped_port(opts.node)
    ctx = Context(opts, command, shown_argv)
    try:
        if problems:
            ctx.usage_error(problems[0])
        if len(positional) < len(spec.args):
            ctx.usage_error("not enough arguments.")
        if not spec.rest and len(positional) > len(spec.args) + len(spec.optional):
            ctx.usage_error("too many arguments.")
        spec.run(ctx, positional)
    except Exit as exc:
        return exc.code
    except KeyboardInterrupt:
        return 130
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
