"""Permissions: users, vhosts and configure/write/read regexes set with `leveretctl`,
then refused and allowed AMQP operations, with RabbitMQ's 403/530 texts."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import uuid

import pika
import pytest

from tests.integration.conftest import channel_error, connect, unique, wait_until
from tests.support.node_process import REPO


def _ctl_command(request: pytest.FixtureRequest) -> tuple[list[str], dict[str, str]]:
    override = os.environ.get("LEVERET_COMPARE_CTL")  # e.g. "rabbitmqctl -n ref@localhost"
    if override:
        return shlex.split(override), dict(os.environ)
    node = request.getfixturevalue("node")
    env = dict(os.environ, LEVERET_COOKIE=node.cookie)
    return [sys.executable, "-c", "from cli.ctl import main; main()", "-n", node.name,
            "--port", str(node.dist_port)], env


@pytest.fixture(scope="module")
def ctl(request: pytest.FixtureRequest):
    prefix, env = _ctl_command(request)

    def run(*args: str) -> str:
        proc = subprocess.run([*prefix, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc.stdout

    return run


@pytest.fixture(scope="module")
def limited(ctl, amqp_url):
    """A user with rights only on names starting 'own-' in a vhost of its own; also a
    vhost it has no permissions in."""
    tag = uuid.uuid4().hex[:8]
    user, password = f"limited-{tag}", "pw-" + tag
    vhost, other_vhost = f"vh-{tag}", f"vh-none-{tag}"
    ctl("add_vhost", vhost)
    ctl("add_vhost", other_vhost)
    ctl("add_user", user, password)
    ctl("set_permissions", "-p", vhost, user, "^own-.*", "^own-.*|^amq\\.default$|^amq\\.topic$", "^own-.*")
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    ctl("set_topic_permissions", "-p", vhost, user, "amq.topic", "^public\\.", ".*")
    ctl("set_topic_permissions", "-p", vhost, user, "own-topic", ".*", "^public\\.")
    p = pika.URLParameters(amqp_url)
    base = f"amqp://{user}:{password}@{p.host}:{p.port}/"
    info = {"user": user, "vhost": vhost, "other_vhost": other_vhost,
            "url": base + vhost, "other_url": base + other_vhost,
            "guest_url": f"amqp://guest:guest@{p.host}:{p.port}/{vhost}"}
    yield info
    ctl("delete_user", user)
    ctl("delete_vhost", vhost)
    ctl("delete_vhost", other_vhost)


def _refused(permission: str, kind: str, name: str, info: dict) -> tuple[int, str]:
    # RabbitMQ 3.10 does not name the missing permission (later versions do).
    return 403, (f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '{info['vhost']}' "
                 f"refused for user '{info['user']}'")


def test_vhost_without_permissions_is_refused(limited):
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as info:
        connect(limited["other_url"])
    assert (f"(530) \"NOT_ALLOWED - access to vhost '{limited['other_vhost']}' refused for user "
            f"'{limited['user']}'\"") in str(info.value)


def test_allowed_operations(limited):
    c = connect(limited["url"])
    ch = c.channel()
    q = unique("own-q")
    ch.queue_declare(q)
    ch.exchange_declare(unique("own-x"), "fanout")
    ch.basic_publish("", q, b"m")
    assert wait_until(lambda: ch.basic_get(q, auto_ack=True)[2]) == b"m"
    ch.queue_delete(q)
    c.close()


def test_configure_permission_guards_declare_and_delete(limited):
    c = connect(limited["url"])
    q = unique("their-q")
    code_text = channel_error(lambda: c.channel().queue_declare(q))
    assert code_text == _refused("configure", "queue", q, limited)
    x = unique("their-x")
    assert channel_error(lambda: c.channel().exchange_declare(x, "direct")) == _refused("configure", "exchange", x, limited)
    # A queue someone else created: passive declare needs no permission, delete needs configure.
    g = connect(limited["guest_url"])
    g.channel().queue_declare(q)
    c.channel().queue_declare(q, passive=True)
    assert channel_error(lambda: c.channel().queue_delete(q)) == _refused("configure", "queue", q, limited)
    g.channel().queue_delete(q)
    g.close()
    c.close()


def test_write_permission_guards_publish(limited):
    c = connect(limited["url"])
    ch = c.channel()

    def publish():
        ch.basic_publish("amq.fanout", "", b"m")
        ch.basic_qos(prefetch_count=0)

    assert channel_error(publish) == _refused("write", "exchange", "amq.fanout", limited)
    c.close()


def test_read_permission_guards_consume_and_get(limited):
    g = connect(limited["guest_url"])
    q = unique("their-q")
    g.channel().queue_declare(q)
    c = connect(limited["url"])
    assert channel_error(lambda: c.channel().basic_consume(q, lambda *a: None)) == _refused("read", "queue", q, limited)
    assert channel_error(lambda: c.channel().basic_get(q)) == _refused("read", "queue", q, limited)
    assert channel_error(lambda: c.channel().queue_purge(q)) == _refused("read", "queue", q, limited)
    g.channel().queue_delete(q)
    g.close()
    c.close()


def test_bind_needs_write_on_the_queue_and_read_on_the_exchange(limited):
    c = connect(limited["url"])
    ch = c.channel()
    own = unique("own-q")
    ch.queue_declare(own)
    # read on amq.direct is missing (read is ^own-.*)
    assert channel_error(lambda: c.channel().queue_bind(own, "amq.direct", "k")) == \
        _refused("read", "exchange", "amq.direct", limited)
    own_x = unique("own-x")
    ch = c.channel()
    ch.exchange_declare(own_x, "direct")
    ch.queue_bind(own, own_x, "k")
    c.channel().queue_delete(own)
    c.channel().exchange_delete(own_x)
    c.close()


def test_topic_permissions_guard_routing_keys(limited):
    c = connect(limited["url"])
    ch = c.channel()
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", "public.news", b"m")  # routing key allowed by the topic permission

    def publish():
        ch.basic_publish("amq.topic", "private.news", b"m")

    assert channel_error(publish) == (
        403, f"ACCESS_REFUSED - access to topic 'private.news' in exchange 'amq.topic' in vhost "
             f"'{limited['vhost']}' refused for user '{limited['user']}'")
    c.close()


def test_topic_permissions_guard_binding_keys(limited):
    c = connect(limited["url"])
    ch = c.channel()
    ch.exchange_declare("own-topic", "topic")
    q = unique("own-q")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, "own-topic", "public.#")
    expected = (403, f"ACCESS_REFUSED - access to topic 'private.#' in exchange 'own-topic' in vhost "
                     f"'{limited['vhost']}' refused for user '{limited['user']}'")
    ch2 = c.channel()
    assert channel_error(lambda: ch2.queue_bind(q, "own-topic", "private.#")) == expected
    ch3 = c.channel()
    ch3.exchange_declare("own-dest", "fanout")
    assert channel_error(lambda: ch3.exchange_bind("own-dest", "own-topic", "private.#")) == expected
    c.channel().exchange_delete("own-dest")
    c.channel().exchange_delete("own-topic")
    c.close()


def test_deleting_a_vhost_closes_its_connections(ctl, amqp_url):
    vhost = unique("doomed")
    ctl("add_vhost", vhost)
    ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    p = pika.URLParameters(amqp_url)
    c = connect(f"amqp://guest:guest@{p.host}:{p.port}/{vhost}")
    ch = c.channel()
    ctl("delete_vhost", vhost)

    def closed():
        try:
            c.process_data_events(time_limit=0.05)
        except pika.exceptions.ConnectionClosedByBroker as e:
            return e
        return None

    e = wait_until(closed)
    assert (e.reply_code, e.reply_text) == (320, f"CONNECTION_FORCED - vhost '{vhost}' is deleted")
    assert not ch.is_open
