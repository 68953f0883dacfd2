"""leveretctl and the control endpoint when something goes wrong on the wire or in the
arguments: clear errors and rabbitmqctl's exit codes, never a traceback. No real node:
a control endpoint in the test's own trio loop (real loopback TCP), leveretctl in a thread."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio

from cli.ctl import run
from cluster.control import EX_UNAVAILABLE, EX_USAGE, control_call, serve_control
from cluster.peer import RemoteError, Request, accept_peer

COOKIE = "ABCDEFGHIJKLMNOPQRST"
NODE = "fake@localhost"


@pytest.fixture(autouse=True)
def cookie_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEVERET_COOKIE", COOKIE)


@pytest.mark.parametrize("option", [["-t", "nan"], ["-t", "-1"], ["--timeout=inf"], ["--port", "70000"],
                                    ["--port", "0"]])
def test_bad_timeout_or_port_is_a_usage_error(option: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["-n", NODE, *option, "list_users"])
    err = capsys.readouterr().err
    assert code == EX_USAGE
    assert err.startswith("Error (argument validation): Invalid options for this command:")
    assert "Traceback" not in err


async def _serve_one_link(behaviour: Callable[[Any, Request], Awaitable[None]], *,
                          task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """A control endpoint that authenticates, reads one request and does `behaviour` with it."""

    async def handle(stream: trio.SocketStream) -> None:
        link = await accept_peer(stream, cookie=COOKIE, local_name=NODE)
        assert not isinstance(link, Exception) and hasattr(link, "receive"), link
        request = await link.receive()
        await behaviour(link, request)
        await trio.aclose_forcefully(link.stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handle, listeners)


async def _ctl(port: int, *args: str) -> int:
    return await trio.to_thread.run_sync(run, ["-n", NODE, "--port", str(port), *args])


async def _close_without_answer(link: Any, request: Request) -> None:
    pass


async def _answer_with_a_list(link: Any, request: Request) -> None:
    await link.reply(request, ["not", "a", "map"])


@pytest.mark.parametrize("behaviour", [_close_without_answer, _answer_with_a_list])
async def test_link_lost_or_garbled_before_the_answer_is_unavailable(
        behaviour: Callable[[Any, Request], Awaitable[None]], capsys: pytest.CaptureFixture[str]) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_one_link, behaviour)
        code = await _ctl(port, "list_users")
        nursery.cancel_scope.cancel()
    err = capsys.readouterr().err
    assert code == EX_UNAVAILABLE
    assert f"connection to localhost:{port} lost before the node answered" in err
    assert "Traceback" not in err


async def test_a_reply_that_cannot_be_encoded_is_an_error_reply_and_the_endpoint_keeps_serving() -> None:
    async def handle(method: str, args: Any) -> Any:
        return object() if method == "broken" else {"echo": method}

    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_control, handle, cookie=COOKIE, node_name=NODE,
                                           host="127.0.0.1", port=0))
        call = partial(control_call, "127.0.0.1", port, NODE, cookie=COOKIE)
        with trio.fail_after(10):
            with pytest.raises(RemoteError, match="the reply could not be sent"):
                await call("broken", {})
            assert await call("status", {}) == {"ok": True, "result": {"echo": "status"}}
        nursery.cancel_scope.cancel()


async def test_export_to_an_unwritable_path_is_a_data_error(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    async def answer_empty(link: Any, request: Request) -> None:
        await link.reply(request, {"ok": True, "result": {"users": []}})

    target = tmp_path / "a-directory"
    target.mkdir()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_serve_one_link, answer_empty)
        code = await _ctl(port, "export_definitions", str(target))
        nursery.cancel_scope.cancel()
    err = capsys.readouterr().err
    assert code == 65
    assert err.startswith(f"Error:\nFailed to write definitions to {target}: ")
    assert "Traceback" not in err


async def test_a_request_missing_an_argument_is_a_usage_error() -> None:
    from types import SimpleNamespace

    from broker.control_handlers import ControlHandlers
    from cluster.control import ControlError

    handlers = ControlHandlers(SimpleNamespace(app_running=True, name=NODE))  # type: ignore[arg-type]
    with pytest.raises(ControlError) as info:
        await handlers.handle("add_user", {"password": "x"})
    assert info.value.exit_code == EX_USAGE
    assert info.value.text == "Error: missing argument 'name' for 'add_user'"
