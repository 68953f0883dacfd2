"""Settings: every precedence level, every kind of bad value, RabbitMQ's size units."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import config
from broker.config import ConfigError, DiskFreeLimit, MemoryWatermark, Settings


def resolve(file_values=None, env=None, overrides=None, label="leveret.yaml") -> Settings:
    return config.resolve_settings(
        file_values=file_values,
        file_label=label if file_values is not None else None,
        env=env or {},
        overrides=overrides or {},
        hostname="box",
    )


def test_defaults() -> None:
    s = resolve()
    assert s == Settings(node_name="leveret@box", data_dir=Path("data/leveret@box"))
    assert s.node_ip_address == "" and s.node_port == 5672 and s.dist_port == 25672
    assert s.management_port == 15672 and s.cookie is None
    assert (s.default_user, s.default_pass, s.default_vhost, s.log_level) == ("guest", "guest", "/", "info")
    assert s.loopback_users == ("guest",) and s.heartbeat == 60 and s.frame_max == 131072 and s.channel_max == 2047
    assert s.vm_memory_high_watermark == MemoryWatermark(relative=0.4)
    assert s.disk_free_limit == DiskFreeLimit(absolute=50_000_000)
    assert s.cluster_nodes == () and s.config_file is None


def test_file_overrides_defaults() -> None:
    s = resolve(
        {
            "node_name": "n1@host-a",
            "node_port": 5673,
            "management_port": 0,
            "loopback_users": [],
            "heartbeat": 30,
            "vm_memory_high_watermark": {"absolute": "2GB"},
            "disk_free_limit": {"mem_relative": 1.5},
            "cluster_nodes": ["n2@host-b", "n3"],
            "log_level": "DEBUG",
        }
    )
    assert s.node_name == "n1@host-a" and s.node_port == 5673
    assert s.dist_port == 25673  # follows the AMQP port, as RabbitMQ's distribution port does
    assert s.management_port == 0 and s.loopback_users == () and s.heartbeat == 30
    assert s.vm_memory_high_watermark == MemoryWatermark(relative=None, absolute=2_000_000_000)
    assert s.disk_free_limit == DiskFreeLimit(absolute=None, mem_relative=1.5)
    assert s.cluster_nodes == ("n2@host-b", "n3@box")
    assert s.data_dir == Path("data/n1@host-a") and s.log_level == "debug"
    assert s.config_file == "leveret.yaml"


def test_environment_overrides_file() -> None:
    s = resolve({"node_port": 5673, "cookie": "FILECOOKIE"}, env={"LEVERET_NODE_PORT": "5674", "LEVERET_COOKIE": "ENVCOOKIE"})
    assert s.node_port == 5674 and s.cookie == "ENVCOOKIE"


def test_flags_override_environment() -> None:
    s = resolve(
        {"node_port": 5673},
        env={"LEVERET_NODE_PORT": "5674", "LEVERET_NODENAME": "envnode"},
        overrides={"node_port": 5675, "node_name": None},  # None: flag not given
    )
    assert s.node_port == 5675 and s.node_name == "envnode@box"


def test_every_environment_variable() -> None:
    env = {
        "LEVERET_NODENAME": "a@b",
        "LEVERET_NODE_IP_ADDRESS": "127.0.0.1",
        "LEVERET_NODE_PORT": "6000",
        "LEVERET_DIST_PORT": "7000",
        "LEVERET_MANAGEMENT_PORT": "0",
        "LEVERET_DATA_DIR": "/var/lib/leveret",
        "LEVERET_COOKIE": "C",
        "LEVERET_DEFAULT_USER": "admin",
        "LEVERET_DEFAULT_PASS": "pw",
        "LEVERET_DEFAULT_VHOST": "prod",
        "LEVERET_LOG_LEVEL": "warning",
        "UNRELATED": "ignored",
    }
    s = resolve(env=env)
    assert (s.node_name, s.node_ip_address, s.node_port, s.dist_port, s.management_port) == ("a@b", "127.0.0.1", 6000, 7000, 0)
    assert (s.data_dir, s.cookie, s.default_user, s.default_pass, s.default_vhost, s.log_level) == (
        Path("/var/lib/leveret"), "C", "admin", "pw", "prod", "warning"
    )


def test_explicit_dist_port_is_kept() -> None:
    assert resolve({"node_port": 5673, "dist_port": 4000}).dist_port == 4000


def test_derived_dist_port_out_of_range() -> None:
    with pytest.raises(ConfigError, match="set dist_port"):
        resolve({"node_port": 50000})
    assert resolve({"node_port": 50000, "dist_port": 50001}).dist_port == 50001


@pytest.mark.parametrize(
    ("file_values", "message"),
    [
        ({"nod_port": 1}, "leveret.yaml: unknown key 'nod_port'"),
        ({"node_port": "abc"}, "leveret.yaml: 'node_port' must be an integer between 1 and 65535, got 'abc'"),
        ({"node_port": 0}, "leveret.yaml: 'node_port' must be an integer between 1 and 65535, got 0"),
        ({"node_port": 70000}, "leveret.yaml: 'node_port' must be an integer between 1 and 65535, got 70000"),
        ({"node_port": True}, "leveret.yaml: 'node_port' must be an integer between 1 and 65535, got True"),
        ({"node_port": 5672.5}, "leveret.yaml: 'node_port' must be an integer between 1 and 65535, got 5672.5"),
        ({"management_port": -1}, "leveret.yaml: 'management_port' must be an integer between 0 and 65535 (0 turns it off), got -1"),
        ({"frame_max": 1000}, "leveret.yaml: 'frame_max' must be an integer between 4096 and 4294967295, got 1000"),
        ({"channel_max": 70000}, "leveret.yaml: 'channel_max' must be an integer between 0 and 65535, got 70000"),
        ({"node_name": "a@b@c"}, "leveret.yaml: 'node_name' must be a node name like 'leveret@host', got 'a@b@c'"),
        ({"node_name": "@host"}, "leveret.yaml: 'node_name' must be a node name like 'leveret@host', got '@host'"),
        ({"node_ip_address": "999.1.1.1"}, "leveret.yaml: 'node_ip_address' must be an IP address, or empty for all interfaces, got '999.1.1.1'"),
        ({"log_level": "loud"}, "leveret.yaml: 'log_level' must be one of debug, info, notice, warning, error, critical, none, got 'loud'"),
        ({"default_user": ""}, "leveret.yaml: 'default_user' must be a non-empty string, got ''"),
        ({"cookie": 12345}, "leveret.yaml: 'cookie' must be a non-empty string"),
        ({"loopback_users": [1]}, "leveret.yaml: 'loopback_users' must be a list of names, got [1]"),
        ({"disk_free_limit": "50XB"}, "leveret.yaml: 'disk_free_limit' must be a size in bytes like 50000000, \"50MB\" or \"2GiB\", got '50XB'"),
        ({"disk_free_limit": {"relative": 1}}, "leveret.yaml: 'disk_free_limit' must be a number or {absolute: ...} or {mem_relative: ...}, got {'relative': 1}"),
        ({"disk_free_limit": {"mem_relative": -1}}, "leveret.yaml: 'disk_free_limit' must be a number at least 0.0, got -1"),
        ({"vm_memory_high_watermark": 1.5}, "leveret.yaml: 'vm_memory_high_watermark' must be a number between 0.0 and 1.0, got 1.5"),
        ({"vm_memory_high_watermark": {"absolute": "lots"}}, "leveret.yaml: 'vm_memory_high_watermark' must be a size in bytes like 50000000, \"50MB\" or \"2GiB\", got 'lots'"),
        ({"cluster_nodes": ["ok@h", "bad@"]}, "leveret.yaml: 'cluster_nodes' must be a node name like 'leveret@host', got 'bad@'"),
    ],
)
def test_file_errors_name_key_and_problem(file_values: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        resolve(file_values)
    assert str(err.value) == message


def test_file_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match="leveret.yaml: must be a mapping of settings, got list"):
        resolve(["node_port", 1])


def test_environment_error_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        resolve(env={"LEVERET_NODE_PORT": "abc"})
    assert str(err.value) == "environment variable LEVERET_NODE_PORT must be an integer between 1 and 65535, got 'abc'"


def test_flag_error_names_the_flag() -> None:
    with pytest.raises(ConfigError) as err:
        resolve(overrides={"management_port": "http"})
    assert str(err.value) == "--management-port must be an integer between 0 and 65535 (0 turns it off), got 'http'"
    with pytest.raises(ConfigError, match="--bogus: unknown setting"):
        resolve(overrides={"bogus": 1})


def test_bad_file_value_reported_even_when_overridden() -> None:
    with pytest.raises(ConfigError, match="'node_port'"):
        resolve({"node_port": "abc"}, env={"LEVERET_NODE_PORT": "5672"})


def test_secret_values_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        resolve(env={"LEVERET_DEFAULT_PASS": "   "})
    assert str(err.value) == "environment variable LEVERET_DEFAULT_PASS must be a non-empty string"


def test_loopback_users_from_a_flag_string() -> None:
    assert resolve(overrides={"loopback_users": "guest, ops"}).loopback_users == ("guest", "ops")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("50MB", 50_000_000),
        ("50mb", 50_000_000),
        ("50M", 50_000_000),
        ("512k", 512_000),
        ("1GB", 1_000_000_000),
        ("2GiB", 2 * 2**30),
        ("2Gi", 2 * 2**30),
        ("3MiB", 3 * 2**20),
        ("1kib", 1024),
        ("1TB", 10**12),
        ("1TiB", 2**40),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert config.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "MB", "1.5GB", "-1", "1XB", "1 GB extra", -5, 1.0, True, None])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError):
        config.parse_size(bad)


# The boundary: files on disk.


def test_load_settings_reads_given_file(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("node_port: 5680\nloopback_users: []\n")
    s = config.load_settings({}, {"LEVERET_LOG_LEVEL": "error"}, path, hostname="h")
    assert s.node_port == 5680 and s.loopback_users == () and s.log_level == "error" and s.config_file == str(path)


def test_load_settings_uses_leveret_yaml_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert config.load_settings({}, {}, None, hostname="h").config_file is None
    (tmp_path / "leveret.yaml").write_text("nod_port: 1\n")
    with pytest.raises(ConfigError) as err:
        config.load_settings({}, {}, None, hostname="h")
    assert str(err.value) == "leveret.yaml: unknown key 'nod_port'"


def test_load_settings_missing_given_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        config.load_settings({}, {}, tmp_path / "nope.yaml", hostname="h")


def test_load_settings_invalid_yaml_and_empty_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node_port: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        config.load_settings({}, {}, bad, hostname="h")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert config.load_settings({}, {}, empty, hostname="h").node_port == 5672


def test_default_node_name_uses_short_hostname(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config.socket, "gethostname", lambda: "web-3.example.com")
    s = config.load_settings({}, {}, None)
    assert s.node_name == "leveret@web-3"
