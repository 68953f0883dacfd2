"""Memory check (a script, not a test): bytes per queued message in QueueState.

    .venv/bin/python tests/queue/memory_per_message.py [count]

Builds `count` (default 1,000,000) small messages, then enqueues them. Prints the
queue's own overhead per message (entries, deques, sequence numbers) separately
from the cost of the `Message` records themselves (owned by whoever routed them,
shared by fan-out copies), measured with tracemalloc.
"""

from __future__ import annotations

import sys
import tracemalloc

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2]))

from broker.amqp.spec import BasicProperties  # noqa: E402
from broker.arguments import QueueSettings  # noqa: E402
from broker.message import Message  # noqa: E402
from broker.queue import Deliver, Enqueue, QueueState  # noqa: E402


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    props = BasicProperties()  # one shared properties object, as a publisher's fast path would
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    messages = [Message("", "q", props, b"%08d" % i, id=i) for i in range(count)]
    after_messages = tracemalloc.get_traced_memory()[0]
    for variant, settings in (("plain", QueueSettings()), ("ttl + priority", QueueSettings(message_ttl_ms=60_000, max_priority=9))):
        state = QueueState("q", settings)
        before = tracemalloc.get_traced_memory()[0]
        for message in messages:
            state.apply(Enqueue(message, 0))
        queued = tracemalloc.get_traced_memory()[0]
        ready = state.messages_ready
        for _ in range(count // 10):
            state.apply(Deliver(0, "c", True))
        unacked = tracemalloc.get_traced_memory()[0]
        print(f"[{variant}] queue overhead: {(queued - before) / count:.1f} bytes per ready message "
              f"({ready} ready)")
        print(f"[{variant}] delivering 10% into unacked adds {(unacked - queued) / (count // 10):.1f} bytes per unacked message")
        del state
    per_message = (after_messages - base) / count
    print(f"Message records (8-byte body, shared properties): {per_message:.1f} bytes each")


if __name__ == "__main__":
    main()
