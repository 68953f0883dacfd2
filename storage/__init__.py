"""Durable storage for a Leveret node: one interface, an LMDB store and an in-memory twin."""
