"""The node lifts its soft limit on open files to the hard limit (each client is a
socket), and says so in its log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import resource
from broker.server import raise_open_files_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
low = min(256, hard)
resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
before, now = raise_open_files_limit()
print(before, now, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)
"""


def test_soft_limit_is_raised_to_the_hard_limit():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True)
    before, now, soft, hard = (int(v) for v in out.stdout.split())
    assert before == min(256, hard)
    assert now == soft == hard


def test_the_node_logs_its_open_file_limit(node):
    assert "open file limit" in node.log_text()
