"""The AMQP 0-9-1 front end of a Leveret node."""

__version__ = "0.1.0"
