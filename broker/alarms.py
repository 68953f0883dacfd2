"""Resource alarms: when memory or free disk cross their limits, publishers are blocked.

RabbitMQ's rules: the memory high watermark is a fraction of installed RAM
(`vm_memory_high_watermark`, default 0.4) or an absolute size, compared with
the node's memory use; `disk_free_limit` is an absolute size (default 50 MB)
or a multiple of RAM, compared with the free space of the data directory's
file system. While any alarm is raised, connections are sent
`connection.blocked` and publishing connections are not read from; when all
clear, `connection.unblocked` follows. Pure: the node's shell samples memory
and disk and passes the figures in.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.config import DiskFreeLimit, MemoryWatermark

MEMORY = "memory"
DISK = "disk"

# The reason text RabbitMQ puts in connection.blocked, by alarm.
BLOCK_REASONS = {MEMORY: "low on memory", DISK: "low on disk"}


def memory_limit(watermark: MemoryWatermark, total_ram: int) -> int:
    if watermark.absolute is not None:
        return watermark.absolute
    assert watermark.relative is not None
    return int(watermark.relative * total_ram)


def disk_limit(limit: DiskFreeLimit, total_ram: int) -> int:
    if limit.absolute is not None:
        return limit.absolute
    assert limit.mem_relative is not None
    return int(limit.mem_relative * total_ram)


@dataclass(frozen=True, slots=True)
class ResourceLimits:
    memory_bytes: int
    disk_free_bytes: int

    @classmethod
    def from_settings(cls, watermark: MemoryWatermark, disk: DiskFreeLimit, total_ram: int) -> "ResourceLimits":
        return cls(memory_limit(watermark, total_ram), disk_limit(disk, total_ram))

    def alarms(self, memory_used: int, disk_free: int) -> frozenset[str]:
        raised = set()
        if memory_used >= self.memory_bytes:
            raised.add(MEMORY)
        if disk_free < self.disk_free_bytes:
            raised.add(DISK)
        return frozenset(raised)


def block_reason(alarms: frozenset[str]) -> str:
    """One reason for connection.blocked; memory first, as RabbitMQ reports it."""
    for alarm in (MEMORY, DISK):
        if alarm in alarms:
            return BLOCK_REASONS[alarm]
    raise ValueError("no alarm raised")
