"""leveret-perf: a side-by-side AMQP 0-9-1 broker benchmark (see docs/performance.md).

`main` is the console script; `cli.perf.command` holds the command line,
`cli.perf.scenarios` the scenarios, `cli.perf.client` the small AMQP client the
load generator speaks with, and `cli.perf.accounting` what counts as delivered.
"""

from .command import main

__all__ = ["main"]
