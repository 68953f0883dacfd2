"""RabbitMQ 3.10's rabbitmqadmin, the management API's command-line client, for tests that
drive Leveret's API with a client nobody here wrote. `scripts/install-rabbitmqadmin` puts
it in the venv (from an installed rabbitmq-server, or unpacked from Debian's package);
`rabbitmqadmin_path` runs that script when the file is missing and says why when it
cannot be had."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.node_process import REPO

INSTALL_SCRIPT = REPO / "scripts" / "install-rabbitmqadmin"


def rabbitmqadmin_path() -> tuple[Path | None, str]:
    """(the rabbitmqadmin script, "") or (None, why it could not be installed)."""
    target = Path(sys.prefix) / "bin" / "rabbitmqadmin"
    if not target.is_file():
        result = subprocess.run([str(INSTALL_SCRIPT)], env={"RABBITMQADMIN": str(target), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not target.is_file():
            return None, f"{INSTALL_SCRIPT.name} failed ({result.returncode}): {result.stderr.strip()[-500:]}"
    return target, ""


def rabbitmqadmin_command(path: Path, host: str, port: int, user: str, password: str, *args: str) -> list[str]:
    """The command line for one rabbitmqadmin call, run by this interpreter (its shebang may
    name a Python that is not there)."""
    return [sys.executable, str(path), "-H", host, "-P", str(port), "-u", user, "-p", password, *args]
