"""`leveret-server`: start a node in the foreground.

Settings come from built-in defaults, then the YAML file (`--config`, else
./leveret.yaml if present), then LEVERET_* environment variables, then these
flags. SIGTERM and SIGINT stop the node cleanly: every client connection is
closed with 320 CONNECTION_FORCED first.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Optional

import trio
import typer

from broker import __version__
from broker.config import ConfigError, Settings, load_settings
from cluster.cookie import CookieError
from storage.interface import StoreError

app = typer.Typer(add_completion=False, help="Start a Leveret node in the foreground.")


def _banner(settings: Settings, listeners: list[tuple[str, str, int]]) -> str:
    lines = [
        "",
        f"  ##  ##      Leveret {__version__}",
        "  ##  ##      A RabbitMQ-compatible AMQP 0-9-1 broker",
        "  ##########",
        "  ######  ##  Licensed under the Apache License 2.0",
        "  ##########",
        "",
        f"  Node:          {settings.node_name}",
        f"  Data dir:      {Path(settings.data_dir).resolve()}",
        f"  Config file:   {settings.config_file or '(none)'}",
        f"  Peer port:     {settings.dist_port}",
    ]
    for protocol, host, port in listeners:
        lines.append(f"  Listener:      {protocol} on [{host}]:{port}")
    lines.append("")
    lines.append("  Starting broker... completed.")
    return "\n".join(lines)


async def run_node(settings: Settings) -> None:
    from broker.node import Node

    log = logging.getLogger("leveret")
    node = Node(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        log.info(_banner(settings, node.listeners))
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("%s received: stopping node %s", signal.Signals(signum).name, settings.node_name)
                break
        await node.stop_clients()
        with trio.move_on_after(5):
            await node.wait_for_writes()
        nursery.cancel_scope.cancel()
    log.info("node %s stopped", settings.node_name)


@app.command()
def main_command(
    config: Optional[str] = typer.Option(None, "--config", help="YAML config file (default ./leveret.yaml if present)"),
    node_name: Optional[str] = typer.Option(None, "--node-name", "-n", help="node name, e.g. leveret@host"),
    node_ip_address: Optional[str] = typer.Option(None, "--node-ip-address", help="address to listen on"),
    node_port: Optional[str] = typer.Option(None, "--node-port", help="AMQP port (5672)"),
    dist_port: Optional[str] = typer.Option(None, "--dist-port", help="peer and control port (25672)"),
    management_port: Optional[str] = typer.Option(None, "--management-port", help="management HTTP port, 0 = off"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="data directory (./data/<node name>)"),
    log_level: Optional[str] = typer.Option(None, "--log-level", help="debug, info, warning, error"),
) -> None:
    overrides = {
        "node_name": node_name,
        "node_ip_address": node_ip_address,
        "node_port": node_port,
        "dist_port": dist_port,
        "management_port": management_port,
        "data_dir": data_dir,
        "log_level": log_level,
    }
    try:
        settings = load_settings(overrides, config_path=config)
    except ConfigError as exc:
        typer.echo(f"leveret-server: configuration error: {exc}", err=True)
        raise typer.Exit(78)
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s [%(levelname)s] %(name)s: %(message)s",
        stream=sys.stdout,
    )
    try:
        trio.run(run_node, settings)
    except KeyboardInterrupt:
        pass
    except BaseException as exc:
        # Start-up failures reach here wrapped in the nursery's exception group.
        for kind, code in _START_FAILURES:
            cause = _find(exc, kind)
            if cause is not None:
                typer.echo(f"leveret-server: cannot start node {settings.node_name}: {cause}", err=True)
                raise typer.Exit(code) from None
        raise


# What stops a node at start, with sysexits-style codes: data (65), unavailable (69), I/O (74).
_START_FAILURES: tuple[tuple[type[BaseException], int], ...] = (
    (StoreError, 74),
    (CookieError, 65),
    (OSError, 69),
)


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def main() -> None:
    app()
