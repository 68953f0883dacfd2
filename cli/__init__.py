"""Command-line entry points: leveret-server, leveretctl, leveret-perf."""
