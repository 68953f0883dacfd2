"""Peer-chosen text in log lines: escaped, bounded, and refusals rate-limited."""

from __future__ import annotations

import logging

from hypothesis import given, strategies as st

from cluster.logtext import PEER_TEXT_LIMIT, RefusalLog, peer_text


def test_a_newline_cannot_forge_a_log_line() -> None:
    forged = "bob\n2026-12-07 10:00:00 [INFO] leveret.node: node stopped"
    assert "\n" not in peer_text(forged)
    assert peer_text(forged).startswith("bob\\n2026")


def test_long_text_is_cut_and_says_how_much() -> None:
    text = peer_text("x" * 65536)
    assert text.startswith("x" * PEER_TEXT_LIMIT)
    assert text.endswith(f"...({65536 - PEER_TEXT_LIMIT} more characters)")
    assert len(text) < PEER_TEXT_LIMIT + 40


def test_bytes_are_decoded_with_escapes() -> None:
    assert peer_text(b"a\xffb\x00") == "a\\xffb\\x00"


@given(st.text())
def test_any_text_becomes_one_bounded_printable_line(value: str) -> None:
    text = peer_text(value)
    assert text.isprintable()
    assert len(text) <= PEER_TEXT_LIMIT * 10 + 40


def test_refusals_are_rate_limited_per_kind_with_a_count(caplog) -> None:
    now = [0.0]
    logger = logging.getLogger("test.refusals")
    refusals = RefusalLog(logger, interval=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.refusals"):
        assert refusals.warning("login", "refused %s", "a")
        for _ in range(199):
            assert not refusals.warning("login", "refused %s", "b")
        assert refusals.warning("cookie", "cookie %s", "c")
        now[0] = 10.5
        assert refusals.warning("login", "refused %s", "d")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused a", "cookie c", "refused d (199 more like it suppressed since the last one)"]


def test_kinds_are_bounded() -> None:
    refusals = RefusalLog(logging.getLogger("test.kinds"), max_kinds=8, clock=lambda: 0.0)
    for i in range(1000):
        refusals.warning(f"kind{i}", "x")
    assert len(refusals._kinds) == 8
