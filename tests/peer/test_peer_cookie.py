"""The cookie: environment first, then a private file created on first use."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cluster import cookie
from cluster.cookie import CookieError


def test_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".leveret.cookie").write_text("FROMFILE")
    os.chmod(tmp_path / ".leveret.cookie", 0o400)
    assert cookie.load_cookie({"LEVERET_COOKIE": "FROMENV"}, tmp_path) == "FROMENV"


def test_created_with_owner_read_only_and_twenty_uppercase_letters(tmp_path: Path) -> None:
    value = cookie.load_cookie({}, tmp_path)
    path = tmp_path / ".leveret.cookie"
    assert stat.S_IMODE(path.stat().st_mode) == 0o400
    assert len(value) == 20 and value.isalpha() and value.isupper() and value.isascii()
    assert path.read_text() == value
    assert cookie.load_cookie({}, tmp_path) == value  # stable once created
    assert cookie.load_cookie({"LEVERET_COOKIE": "  "}, tmp_path) == value  # blank env is unset


def test_fresh_cookies_differ(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert cookie.load_cookie({}, tmp_path / "a") != cookie.load_cookie({}, tmp_path / "b")


def test_created_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        cookie.load_cookie({}, tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / ".leveret.cookie").stat().st_mode) == 0o400


@pytest.mark.parametrize("mode", [0o644, 0o440, 0o404, 0o600 | 0o004])
def test_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / ".leveret.cookie"
    path.write_text("SECRETSECRETSECRETSE")
    os.chmod(path, mode)
    with pytest.raises(CookieError) as err:
        cookie.load_cookie({}, tmp_path)
    assert str(err.value) == f"Cookie file {path} must be accessible by owner only"


def test_owner_read_write_accepted_and_whitespace_trimmed(tmp_path: Path) -> None:
    path = tmp_path / ".leveret.cookie"
    path.write_text("MYCOOKIE\n")
    os.chmod(path, 0o600)
    assert cookie.load_cookie({}, tmp_path) == "MYCOOKIE"


def test_empty_cookie_file_refused(tmp_path: Path) -> None:
    path = tmp_path / ".leveret.cookie"
    path.write_text("\n")
    os.chmod(path, 0o400)
    with pytest.raises(CookieError, match="is empty"):
        cookie.load_cookie({}, tmp_path)


def test_directory_in_place_of_cookie_refused(tmp_path: Path) -> None:
    (tmp_path / ".leveret.cookie").mkdir(mode=0o700)
    with pytest.raises(CookieError, match="not a regular file"):
        cookie.load_cookie({}, tmp_path)


def test_missing_home_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CookieError, match="cannot be created"):
        cookie.load_cookie({}, tmp_path / "no-such-home")


def test_cookie_hash_is_base64_md5_as_rabbitmqctl_prints() -> None:
    # md5("abc") = 900150983cd24fb0d6963f7d28e17f72
    assert cookie.cookie_hash("abc") == "kAFQmDzST7DWlj99KOF/cg=="
    assert cookie.cookie_hash("A") != cookie.cookie_hash("B")
