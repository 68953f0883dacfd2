"""Settings for what a client may send: max_message_size and the failed-login delay."""

from __future__ import annotations

import pytest

from broker import config
from broker.config import ConfigError, Settings


def resolve(file_values=None) -> Settings:
    return config.resolve_settings(file_values=file_values, file_label="leveret.yaml" if file_values else None,
                                   env={}, overrides={}, hostname="box")


def test_defaults_are_rabbitmqs() -> None:
    s = resolve()
    assert s.max_message_size == 134_217_728  # RabbitMQ 3.10's default, 128 MiB
    assert s.failed_auth_delay == 3.0  # rabbit_reader's ?SILENT_CLOSE_DELAY
    assert s.failed_auth_delay_max_connections == 1000


def test_values_with_units_up_to_rabbitmqs_ceiling() -> None:
    s = resolve({"max_message_size": "512MiB", "failed_auth_delay": 0.25, "failed_auth_delay_max_connections": 5})
    assert s.max_message_size == 536_870_912
    assert s.failed_auth_delay == 0.25 and s.failed_auth_delay_max_connections == 5
    assert resolve({"max_message_size": 1}).max_message_size == 1
    assert resolve({"failed_auth_delay": "1.5"}).failed_auth_delay == 1.5


@pytest.mark.parametrize("key, value, problem", [
    ("max_message_size", 536_870_913, "must be a size between 1 byte and 536870912 bytes"),
    ("max_message_size", 0, "must be a size between 1 byte and 536870912 bytes"),
    ("max_message_size", "big", "must be a size in bytes"),
    ("failed_auth_delay", -1, "must be a number between 0.0 and 60.0"),
    ("failed_auth_delay", "soon", "must be a number between 0.0 and 60.0"),
    ("failed_auth_delay_max_connections", -1, "must be an integer between 0 and 1000000"),
])
def test_bad_values_are_refused(key: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve({key: value})
    assert f"leveret.yaml: {key!r} " in str(info.value) and problem in str(info.value)
