"""A `broker.node.Node` run inside the test process, for what a test must reach into (the
store under it, its metadata log) that a `leveret-server` process keeps to itself."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from broker.config import Settings
from broker.node import Node
from tests.support.node_process import port_mapper_port


async def run_node_once(data_dir: Path, name: str, work: Callable[[Node], Awaitable[None]]) -> None:
    """Start a node on `data_dir` (ports chosen by the system), run `work` on it, stop it
    as a SIGTERM would: clients closed, staged writes taken, then cancelled."""
    settings = Settings(node_name=name, node_ip_address="127.0.0.1", node_port=0, dist_port=0,
                        management_port=0, prometheus_port=0, data_dir=data_dir, cookie="INPROCESSCOOKIE",
                        # The test process's own port mapper: a node starts a detached one on
                        # the default port when none answers, which would outlive the test.
                        port_mapper_port=port_mapper_port())
    node = Node(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            await work(node)
        finally:
            await node.stop_clients()
            await node.wait_for_writes()
            nursery.cancel_scope.cancel()
