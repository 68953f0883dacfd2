"""The shared cookie: where a node and leveretctl find it, and the hash operators compare.

Like Erlang's cookie: `LEVERET_COOKIE` wins; otherwise `$HOME/.leveret.cookie`,
created on first use with 20 random uppercase letters and mode 0400. A cookie
file that group or others can read is refused, as Erlang refuses such an
`.erlang.cookie`: anyone who reads it controls the cluster.

`cookie_hash` is what `rabbitmqctl` prints as "Cookie hash" in its
diagnostics (rabbit_nodes_common:cookie_hash/0: base64 of the MD5 of the
cookie), so two machines can compare cookies without showing them.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import stat
import string
from collections.abc import Mapping
from pathlib import Path

COOKIE_ENV = "LEVERET_COOKIE"
COOKIE_FILE_NAME = ".leveret.cookie"
_COOKIE_LEN = 20


class CookieError(Exception):
    pass


def new_cookie() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(_COOKIE_LEN))


def cookie_hash(cookie: str) -> str:
    return base64.b64encode(hashlib.md5(cookie.encode("utf-8")).digest()).decode("ascii")


def cookie_path(home: str | os.PathLike[str]) -> Path:
    return Path(home) / COOKIE_FILE_NAME


def load_cookie(env: Mapping[str, str], home: str | os.PathLike[str]) -> str:
    """The cookie from the environment, else from the cookie file under `home` (created if absent)."""
    from_env = env.get(COOKIE_ENV, "").strip()
    if from_env:
        return from_env
    path = cookie_path(home)
    try:
        _create(path)
    except FileExistsError:
        pass
    except OSError as exc:
        raise CookieError(f"Cookie file {path} cannot be created: {exc.strerror}") from None
    return _read(path)


def _create(path: Path) -> None:
    # O_EXCL: if two processes start at once, one creates and the other reads its cookie.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        os.fchmod(fd, 0o400)  # the umask cannot loosen it, but make the mode exact
        os.write(fd, new_cookie().encode("ascii"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _read(path: Path) -> str:
    try:
        info = path.stat()
    except OSError as exc:
        raise CookieError(f"Cookie file {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise CookieError(f"Cookie file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise CookieError(f"Cookie file {path} must be accessible by owner only")
    try:
        cookie = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CookieError(f"Cookie file {path} cannot be read: {exc}") from None
    if not cookie:
        raise CookieError(f"Cookie file {path} is empty")
    return cookie
