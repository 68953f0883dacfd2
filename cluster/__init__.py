"""Replication: Raft groups, peer links, membership, metadata and mirrors."""
