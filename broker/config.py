"""Node settings: one frozen `Settings` from defaults, the YAML file, the environment and flags.

Precedence, lowest first: built-in defaults < YAML file (`--config`, else
./leveret.yaml if present) < LEVERET_* environment variables < command-line
flags. Every value given at any level is validated, so a typo in the file is
reported even when the environment overrides it. Errors are `ConfigError`s
whose message names where the value came from, the key and the problem.

`resolve_settings` is pure (file contents, environment, flags and host name
in; settings out); `load_settings` is the boundary that reads the file and
asks for the host name.

Defaults follow RabbitMQ: listen on all interfaces, AMQP 5672, distribution
port = AMQP port + 20000 (25672), management 15672, guest/guest on "/",
loopback-only guest, heartbeat 60 s, frame_max 131072, channel_max 2047,
memory high watermark 0.4 of RAM, disk free limit 50 MB, max_message_size
128 MiB (at most 512 MiB), 3 s before a failed login is answered. Sizes accept
RabbitMQ's units: "50MB"/"50M"/"50k" are decimal (1000-based, as RabbitMQ
3.13+ and Kubernetes read them), "2GiB"/"2Gi" binary, a bare number bytes.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from broker.amqp.channel import DEFAULT_MAX_MESSAGE_SIZE, MAX_MSG_SIZE

DEFAULT_CONFIG_FILE = "leveret.yaml"
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "none")
DIST_PORT_OFFSET = 20000


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class MemoryWatermark:
    """Exactly one of `relative` (fraction of RAM) or `absolute` (bytes) is set."""

    relative: float | None = 0.4
    absolute: int | None = None

    def __post_init__(self) -> None:
        assert (self.relative is None) != (self.absolute is None)


@dataclass(frozen=True, slots=True)
class DiskFreeLimit:
    """Exactly one of `absolute` (bytes) or `mem_relative` (multiple of RAM) is set."""

    absolute: int | None = 50_000_000
    mem_relative: float | None = None

    def __post_init__(self) -> None:
        assert (self.absolute is None) != (self.mem_relative is None)


@dataclass(frozen=True, slots=True)
class Settings:
    node_name: str
    node_ip_address: str = ""
    node_port: int = 5672
    dist_port: int = 5672 + DIST_PORT_OFFSET
    management_port: int = 15672  # 0: no management listener
    prometheus_port: int = 15692  # 0: no Prometheus metrics listener
    data_dir: Path = Path("data")
    cookie: str | None = None  # None: use cluster.cookie.load_cookie
    default_user: str = "guest"
    default_pass: str = "guest"
    default_vhost: str = "/"
    log_level: str = "info"
    loopback_users: tuple[str, ...] = ("guest",)
    heartbeat: int = 60
    frame_max: int = 131072
    channel_max: int = 2047
    vm_memory_high_watermark: MemoryWatermark = field(default_factory=MemoryWatermark)
    disk_free_limit: DiskFreeLimit = field(default_factory=DiskFreeLimit)
    # Seed nodes a fresh node forms or joins a cluster with (cluster.membership.formation_step).
    cluster_nodes: tuple[str, ...] = ()
    # The host's port mapper (node name -> peer port), as epmd's 4369 for RabbitMQ.
    port_mapper_port: int = 4370
    # Start a detached mapper when none answers on that port (as a RabbitMQ node starts
    # epmd); off, the node only retries (tests run a mapper of their own and stop it).
    port_mapper_autostart: bool = True
    # Where a new queue is homed unless x-queue-master-locator or a policy says otherwise.
    queue_master_locator: str = "client-local"
    # How long a node holding a replica of an ha-mode exactly queue may be down before the
    # replica is placed on another node (RabbitMQ re-places at once; a restart would then
    # cost a full copy of the queue).
    mirror_replacement_delay: float = 60.0
    # Ready messages a queue keeps in memory before paging the rest to the store
    # (0: never page), and the same window in bytes of bodies.
    queue_memory_window: int = 10_000
    queue_memory_window_bytes: int = 32 << 20
    # RabbitMQ 3.10's default and ceiling (512 MiB, rabbit.hrl ?MAX_MSG_SIZE).
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # Seconds a failed handshake (a refused login above all) waits before it is answered
    # and closed, RabbitMQ's ?SILENT_CLOSE_DELAY; at most this many wait at once, the
    # others are closed at once.
    failed_auth_delay: float = 3.0
    failed_auth_delay_max_connections: int = 1000
    config_file: str | None = None


# --------------------------------------------------------------------------
# Value parsers: raw value in, typed value out, or _Invalid("must be ..., got ...").


class _Invalid(Exception):
    pass


def _got(value: Any) -> str:
    return f"got {value!r}"


def _int_in(low: int, high: int, note: str = "") -> Callable[[Any, str], int]:
    def parse(value: Any, hostname: str) -> int:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
            number = int(value)
        if number is None or not low <= number <= high:
            raise _Invalid(f"must be an integer between {low} and {high}{note}, {_got(value)}")
        return number

    return parse


def _flag(value: Any, hostname: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _Invalid(f"must be true or false, {_got(value)}")


def _text(value: Any, hostname: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid(f"must be a non-empty string, {_got(value)}")
    return value.strip()


def _secret(value: Any, hostname: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("must be a non-empty string")  # never echo a secret into logs
    return value.strip()


def _node_name(value: Any, hostname: str) -> str:
    """"rabbit" means rabbit@<short hostname>, as RabbitMQ reads RABBITMQ_NODENAME."""
    if not isinstance(value, str):
        raise _Invalid(f"must be a node name like 'leveret@host', {_got(value)}")
    name = value.strip()
    if "@" not in name:
        name = f"{name}@{hostname}"
    local, _, host = name.partition("@")
    if not local or not host or "@" in host or re.search(r"\s", name):
        raise _Invalid(f"must be a node name like 'leveret@host', {_got(value)}")
    return name


def _ip_address(value: Any, hostname: str) -> str:
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "localhost"):
            return text
        try:
            return str(ipaddress.ip_address(text))
        except ValueError:
            pass
    raise _Invalid(f"must be an IP address, or empty for all interfaces, {_got(value)}")


def _log_level(value: Any, hostname: str) -> str:
    if isinstance(value, str) and value.strip().lower() in LOG_LEVELS:
        return value.strip().lower()
    raise _Invalid(f"must be one of {', '.join(LOG_LEVELS)}, {_got(value)}")


def _locator(value: Any, hostname: str) -> str:
    from cluster.placement import LOCATORS

    if isinstance(value, str) and value.strip() in LOCATORS:
        return value.strip()
    raise _Invalid(f"must be one of {', '.join(LOCATORS)}, {_got(value)}")


def _names(value: Any, hostname: str) -> tuple[str, ...]:
    if isinstance(value, str):  # from the environment or a flag: "guest,admin"
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v.strip() for v in value):
        return tuple(v.strip() for v in value)
    raise _Invalid(f"must be a list of names, {_got(value)}")


def _node_names(value: Any, hostname: str) -> tuple[str, ...]:
    return tuple(_node_name(name, hostname) for name in _names(value, hostname))


_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_BINARY = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_SIZE = re.compile(r"([0-9]+)(?:([kKmMgGtTpP])([iI]?)[bB]?)?")


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string with RabbitMQ's information units ("50MB", "2GiB", "512k")."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE.fullmatch(value.strip())):
        number, prefix, binary = int(m[1]), (m[2] or "").lower(), m[3]
        return number * (_BINARY[prefix] if binary else _DECIMAL[prefix])
    raise ValueError(f"must be a size in bytes like 50000000, \"50MB\" or \"2GiB\", {_got(value)}")


def _size(value: Any, hostname: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _fraction(value: Any, low: float, high: float | None) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        if value >= low and (high is None or value <= high):
            return float(value)
    bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
    raise _Invalid(f"must be a number {bounds}, {_got(value)}")


def _one_key(value: Any, allowed: tuple[str, ...]) -> tuple[str, Any]:
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in allowed:
        keys = " or ".join(f"{{{k}: ...}}" for k in allowed)
        raise _Invalid(f"must be a number or {keys}, {_got(value)}")
    (key, inner), = value.items()
    return key, inner


def _watermark(value: Any, hostname: str) -> MemoryWatermark:
    if not isinstance(value, dict):
        return MemoryWatermark(relative=_fraction(value, 0.0, 1.0))
    key, inner = _one_key(value, ("relative", "absolute"))
    if key == "relative":
        return MemoryWatermark(relative=_fraction(inner, 0.0, 1.0))
    return MemoryWatermark(relative=None, absolute=_size(inner, hostname))


def _disk_limit(value: Any, hostname: str) -> DiskFreeLimit:
    if not isinstance(value, dict):
        return DiskFreeLimit(absolute=_size(value, hostname))
    key, inner = _one_key(value, ("absolute", "mem_relative"))
    if key == "absolute":
        return DiskFreeLimit(absolute=_size(inner, hostname))
    return DiskFreeLimit(absolute=None, mem_relative=_fraction(inner, 0.0, None))


def _positive_size(value: Any, hostname: str) -> int:
    size = _size(value, hostname)
    if size < 1:
        raise _Invalid(f"must be a size of at least 1 byte, {_got(value)}")
    return size


def _message_size(value: Any, hostname: str) -> int:
    size = _size(value, hostname)
    if not 1 <= size <= MAX_MSG_SIZE:
        raise _Invalid(f"must be a size between 1 byte and {MAX_MSG_SIZE} bytes (512MiB, RabbitMQ's maximum), "
                       f"{_got(value)}")
    return size


def _seconds(low: float, high: float) -> Callable[[Any, str], float]:
    def parse(value: Any, hostname: str) -> float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        return _fraction(value, low, high)

    return parse


def _path(value: Any, hostname: str) -> Path:
    return Path(_text(value, hostname))


# key -> (parser, environment variable or None)
_KEYS: dict[str, tuple[Callable[[Any, str], Any], str | None]] = {
    "node_name": (_node_name, "LEVERET_NODENAME"),
    "node_ip_address": (_ip_address, "LEVERET_NODE_IP_ADDRESS"),
    "node_port": (_int_in(1, 65535), "LEVERET_NODE_PORT"),
    "dist_port": (_int_in(1, 65535), "LEVERET_DIST_PORT"),
    "management_port": (_int_in(0, 65535, " (0 turns it off)"), "LEVERET_MANAGEMENT_PORT"),
    "prometheus_port": (_int_in(0, 65535, " (0 turns it off)"), "LEVERET_PROMETHEUS_PORT"),
    "data_dir": (_path, "LEVERET_DATA_DIR"),
    "cookie": (_secret, "LEVERET_COOKIE"),
    "default_user": (_text, "LEVERET_DEFAULT_USER"),
    "default_pass": (_secret, "LEVERET_DEFAULT_PASS"),
    "default_vhost": (_text, "LEVERET_DEFAULT_VHOST"),
    "log_level": (_log_level, "LEVERET_LOG_LEVEL"),
    "loopback_users": (_names, None),
    "heartbeat": (_int_in(0, 65535), None),
    "frame_max": (_int_in(4096, 2**32 - 1), None),
    "channel_max": (_int_in(0, 65535), None),
    "vm_memory_high_watermark": (_watermark, None),
    "disk_free_limit": (_disk_limit, None),
    "cluster_nodes": (_node_names, "LEVERET_CLUSTER_NODES"),
    "port_mapper_port": (_int_in(1, 65535), "LEVERET_PORT_MAPPER_PORT"),
    "port_mapper_autostart": (_flag, "LEVERET_PORT_MAPPER_AUTOSTART"),
    "queue_master_locator": (_locator, "LEVERET_QUEUE_MASTER_LOCATOR"),
    "mirror_replacement_delay": (_seconds(0.0, 86_400.0), "LEVERET_MIRROR_REPLACEMENT_DELAY"),
    "queue_memory_window": (_int_in(0, 2**31 - 1, " (0 turns paging off)"), "LEVERET_QUEUE_MEMORY_WINDOW"),
    "queue_memory_window_bytes": (_positive_size, None),
    "max_message_size": (_message_size, None),
    "failed_auth_delay": (_seconds(0.0, 60.0), None),
    "failed_auth_delay_max_connections": (_int_in(0, 1_000_000, " (0: never delay)"), None),
}

ENVIRONMENT_VARIABLES = {env: key for key, (_, env) in _KEYS.items() if env}


def _apply(layer: dict[str, Any], key: str, raw: Any, where: str, hostname: str) -> None:
    parser, _ = _KEYS[key]
    try:
        layer[key] = parser(raw, hostname)
    except _Invalid as problem:
        raise ConfigError(f"{where} {problem}") from None


def resolve_settings(
    *,
    file_values: Any,
    file_label: str | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Any],
    hostname: str,
) -> Settings:
    """Merge the layers; `file_values` is the parsed YAML document (None if there is no file)."""
    values: dict[str, Any] = {}

    if file_values is not None:
        if not isinstance(file_values, dict):
            raise ConfigError(f"{file_label}: must be a mapping of settings, got {type(file_values).__name__}")
        for key, raw in file_values.items():
            if key not in _KEYS:
                raise ConfigError(f"{file_label}: unknown key {key!r}")
            _apply(values, key, raw, f"{file_label}: {key!r}", hostname)

    for var, key in ENVIRONMENT_VARIABLES.items():
        if var in env:
            _apply(values, key, env[var], f"environment variable {var}", hostname)

    for key, raw in overrides.items():
        flag = "--" + key.replace("_", "-")
        if key not in _KEYS:
            raise ConfigError(f"{flag}: unknown setting")
        if raw is not None:  # an option not given on the command line
            _apply(values, key, raw, flag, hostname)

    node_name = values.setdefault("node_name", f"leveret@{hostname}")
    values.setdefault("data_dir", Path("data") / node_name)
    if "dist_port" not in values:
        node_port = values.get("node_port", 5672)
        if node_port + DIST_PORT_OFFSET > 65535:
            raise ConfigError(
                f"dist_port defaults to node_port + {DIST_PORT_OFFSET} = {node_port + DIST_PORT_OFFSET}, "
                "which is not a valid port; set dist_port"
            )
        values["dist_port"] = node_port + DIST_PORT_OFFSET
    return Settings(config_file=file_label, **values)


def short_hostname() -> str:
    return socket.gethostname().split(".", 1)[0]


def load_settings(
    argv_overrides: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    *,
    hostname: str | None = None,
) -> Settings:
    """Read the YAML file (the one given, else ./leveret.yaml if present) and resolve all layers."""
    if env is None:
        env = os.environ
    path: Path | None
    if config_path is not None:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
    else:
        path = Path(DEFAULT_CONFIG_FILE) if Path(DEFAULT_CONFIG_FILE).is_file() else None

    file_values = None
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot be read: {exc}") from None
        try:
            file_values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if file_values is None:  # an empty file
            file_values = {}

    return resolve_settings(
        file_values=file_values,
        file_label=str(path) if path is not None else None,
        env=env,
        overrides=argv_overrides,
        hostname=hostname or short_hostname(),
    )
