"""leveretctl's cluster commands on a node: cluster_status, reset, node types, waiting for nodes.

The node's members are its metadata group's (`cluster.membership`); the nodes it
lists as running are those it can reach. Texts and exit codes are rabbitmqctl
3.10.8's (tests/ctl/rabbitmq-3.10.8-cluster-commands.txt records them).
"""

from __future__ import annotations

import platform
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

import trio

from broker import __version__
from cluster.control import EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE, ControlError
from broker.clustering import JoinRefused
from cluster import metadata as md
from broker.node_view import NodeView
from cluster.membership import METADATA_GROUP, cluster_view, remove_member
from cluster.raft.driver import Applied

if TYPE_CHECKING:
    from broker.node import Node

APP_NOT_STOPPED: Final = ("this command requires the 'leveret' app to be stopped on the target node. "
                          "Stop it with 'leveretctl stop_app'.")
ONLY_DISC: Final = "Every Leveret node is a disc node: ram nodes are not supported."

Op = Callable[[Mapping[str, Any]], Awaitable[Any]]


def node_summary(node: "Node") -> dict[str, Any]:
    """What cluster_status shows of one running node."""
    return {
        "product_name": "Leveret",
        "product_version": __version__,
        "python_version": platform.python_version(),
        "alarms": sorted(node.alarms),
        "app_running": node.app_running,
        "listeners": NodeView(node).listener_rows(),
    }


class ClusterControl:
    # Operations on the node's membership, which the app must not be serving during.
    WITHOUT_APP: Final = frozenset({"reset", "change_cluster_node_type", "join_cluster", "forget_cluster_node"})

    def __init__(self, node: "Node") -> None:
        self.node = node

    def methods(self) -> dict[str, Op]:
        return {name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")}

    def _require_app_stopped(self) -> None:
        if self.node.app_running:
            raise ControlError(APP_NOT_STOPPED, EX_USAGE)

    async def op_cluster_status(self, args: Mapping[str, Any]) -> Any:
        node = self.node
        view = cluster_view(node.name, node.cluster_members(), node.reachable_nodes())
        summaries = {node.name: node_summary(node)}
        for name, summary in (await node.peer_summaries(view.running_nodes)).items():
            summaries[name] = summary
        return {
            "cluster_name": node.cluster_name,
            "disk_nodes": list(view.disk_nodes),
            "running_nodes": [n for n in view.running_nodes if n in summaries],
            "partitions": {n: list(peers) for n, peers in view.partitions.items()},
            "nodes": summaries,
        }

    async def op_reset(self, args: Mapping[str, Any]) -> Any:
        self._require_app_stopped()
        if not args.get("force"):
            # force_reset skips this: it is for a node whose cluster cannot be reached.
            refused = await self.node.clustering.leave()
            if refused is not None:
                raise ControlError(refused, EX_UNAVAILABLE)
        await self.node.reset()
        return None

    async def op_join_cluster(self, args: Mapping[str, Any]) -> Any:
        self._require_app_stopped()
        node = self.node
        target = str(args["target"])
        if target == node.name:
            raise ControlError(f"Error: cannot cluster node with itself: {node.name}", EX_SOFTWARE)
        members = await node.clustering.members_of(target)
        if isinstance(members, JoinRefused):
            raise ControlError(members.text, members.exit_code)
        if node.name in members:
            return "already_member"
        if not members:
            raise ControlError(f"{target} is not a member of a cluster (it is joining one itself)", EX_UNAVAILABLE)
        refused = await node.clustering.leave()
        if refused is not None:
            raise ControlError(refused, EX_UNAVAILABLE)
        refused = await node.join_cluster(target)
        if refused is not None:
            raise ControlError(refused, EX_UNAVAILABLE)
        return None

    async def op_forget_cluster_node(self, args: Mapping[str, Any]) -> Any:
        node = self.node
        gone = str(args["node"])
        if gone not in node.cluster_members():
            raise ControlError("{:not_a_cluster_node, 'The node selected is not in the cluster.'}", EX_UNAVAILABLE)
        if gone == node.name or gone in node.reachable_nodes():
            summary = (await node.peer_summaries((gone,))).get(gone) if gone != node.name else None
            if gone == node.name or summary is None or summary.get("app_running", True):
                raise ControlError(f"Leveret on node {gone} must be stopped with 'leveretctl -n {gone} stop_app' "
                                   "before it can be removed", EX_UNAVAILABLE)
        groups = node.clustering.groups
        assert groups is not None
        outcome = await remove_member(groups, METADATA_GROUP, gone)
        if not isinstance(outcome, Applied):
            raise ControlError(f"could not remove {gone} from the cluster: {outcome.reason}", EX_UNAVAILABLE)
        # Its non-durable and exclusive queues left with it (their messages lived there only).
        await node.propose_metadata(md.DropTransient(gone))
        return None

    async def op_change_cluster_node_type(self, args: Mapping[str, Any]) -> Any:
        self._require_app_stopped()
        if args["type"] != "disc":
            raise ControlError(ONLY_DISC, EX_UNAVAILABLE)
        return None

    async def op_await_online_nodes(self, args: Mapping[str, Any]) -> Any:
        count = int(args["count"])
        node = self.node
        with trio.move_on_after(float(args.get("timeout") or 300)):
            while len(cluster_view(node.name, node.cluster_members(), node.reachable_nodes()).running_nodes) < count:
                await trio.sleep(0.1)
            return None
        raise ControlError(f"Error: timed out while waiting. Not enough nodes joined {node.name}'s cluster.",
                           EX_SOFTWARE)
