"""Who may use the management API and what they see: RabbitMQ 3.10's tag rules
(rabbit_mgmt_util is_authorized*), pure.

- any of `management`, `policymaker`, `monitoring`, `administrator`: may log in
  (without one: 401 "Not management user");
- `management`: sees and acts in the vhosts it has permissions in, and only its own
  connections and channels;
- `policymaker`: as management, and sets policies and parameters in those vhosts;
- `monitoring`: as management, and sees every vhost, connection, channel and node;
- `administrator`: everything, including users, vhosts, permissions and definitions.

Changes to queues, exchanges and bindings are further held to the user's AMQP
permissions (`broker.auth` checks), as RabbitMQ runs them through a direct AMQP
connection as that user.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Iterable

from broker.management.errors import ApiError, not_authorised

MANAGEMENT_TAGS = frozenset({"management", "policymaker", "monitoring", "administrator"})


@dataclass(frozen=True, slots=True)
class Principal:
    """A logged-in user: its name, tags, and the vhosts it has permissions in."""

    name: str
    tags: frozenset[str]
    vhosts: frozenset[str]

    @property
    def is_admin(self) -> bool:
        return "administrator" in self.tags

    @property
    def is_monitor(self) -> bool:
        return bool(self.tags & {"monitoring", "administrator"})

    @property
    def is_policymaker(self) -> bool:
        return bool(self.tags & {"policymaker", "administrator"})

    def sees_vhost(self, vhost: str) -> bool:
        return self.is_monitor or vhost in self.vhosts

    def sees_user_objects(self, owner: str) -> bool:
        """Connections and channels: monitors see all, others their own."""
        return self.is_monitor or owner == self.name


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """(username, password) from an `Authorization: Basic ...` header, None if absent or malformed."""
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, colon, password = decoded.partition(":")
    return (username, password) if colon else None


def require_management(tags: Iterable[str]) -> ApiError | None:
    return None if MANAGEMENT_TAGS & set(tags) else not_authorised("Not management user")


def require_admin(who: Principal) -> ApiError | None:
    return None if who.is_admin else not_authorised("Not administrator user")


def require_monitor(who: Principal) -> ApiError | None:
    return None if who.is_monitor else not_authorised("Not monitor user")


def require_vhost(who: Principal, vhost: str) -> ApiError | None:
    # rabbit_mgmt_util:is_authorized_vhost: administrators and users with permissions there.
    if who.is_admin or vhost in who.vhosts:
        return None
    return not_authorised("User not authorised to access virtual host")


def require_policymaker(who: Principal, vhost: str) -> ApiError | None:
    if not who.is_policymaker:
        return not_authorised("Not policymaker user")
    return require_vhost(who, vhost)
