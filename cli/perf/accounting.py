"""The load generator's own accounting: what was sent, confirmed and really delivered.

Pure: no sockets, no clocks (times are passed in as monotonic nanoseconds).

Every message body starts with a stamp: magic, publisher id, sequence number
(1, 2, 3, ... per publisher) and the send time. A consumer counts a delivery only
when its body carries a valid stamp of a message it has not already seen on that
queue, so a broker that drops, duplicates or garbles messages can only make the
figures lower (a delivery that comes before an earlier-published message of the
same publisher is counted as out of order: every scenario has one consumer per
queue and no requeues, so a FIFO queue delivers in publish order): throughput is computed from unique deliveries, never from what
was sent or confirmed. `verdict` then compares, queue by queue, what each
publisher sent with what arrived, and names every missing message.

Confirms are tracked per publisher with the tags the broker acks (tag n = the
n-th publish on the channel, by the confirms extension); acking a tag twice or a
tag never published does not count twice or at all.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "ConfirmClock",
    "ConfirmTracker",
    "PublishTally",
    "ReceiveTally",
    "STAMP_SIZE",
    "Verdict",
    "make_body",
    "read_stamp",
    "verdict",
]

_MAGIC = b"LVPF"
_STAMP = struct.Struct(">4sIQQ")  # magic, publisher id, sequence, send time (ns)
STAMP_SIZE = _STAMP.size


def make_body(publisher: int, sequence: int, sent_ns: int, size: int) -> bytes:
    """A message body of `size` octets (at least STAMP_SIZE) stamped for accounting."""
    assert size >= STAMP_SIZE, size
    return _STAMP.pack(_MAGIC, publisher, sequence, sent_ns) + b"." * (size - STAMP_SIZE)


def stamp_prefix(publisher: int, sequence: int, sent_ns: int) -> bytes:
    """Just the stamp, for a publisher that appends the padding itself."""
    return _STAMP.pack(_MAGIC, publisher, sequence, sent_ns)


def read_stamp(body: bytes) -> tuple[int, int, int] | None:
    """(publisher, sequence, sent_ns), or None when the body is not one of ours."""
    if len(body) < STAMP_SIZE:
        return None
    magic, publisher, sequence, sent_ns = _STAMP.unpack_from(body)
    if magic != _MAGIC or sequence == 0:
        return None
    return publisher, sequence, sent_ns


class ConfirmTracker:
    """Publisher confirms for one channel: which of the published tags are settled."""

    __slots__ = ("published", "acked", "nacked", "bogus", "_outstanding", "_settled_early")

    def __init__(self) -> None:
        self.published = 0
        self.acked = 0
        self.nacked = 0
        # Acks/nacks naming a tag never published or already settled.
        self.bogus = 0
        self._outstanding: deque[int] = deque()
        self._settled_early: set[int] = set()

    @property
    def unconfirmed(self) -> int:
        return len(self._outstanding) - len(self._settled_early)

    @property
    def settled_through(self) -> int:
        """The highest tag with every tag up to it settled."""
        return self._outstanding[0] - 1 if self._outstanding else self.published

    def publish(self) -> int:
        self.published += 1
        self._outstanding.append(self.published)
        return self.published

    def settle(self, tag: int, multiple: bool, ok: bool) -> int:
        """Apply basic.ack (ok) / basic.nack; returns how many messages it settled."""
        outstanding = self._outstanding
        early = self._settled_early
        settled = 0
        if multiple:
            while outstanding and outstanding[0] <= tag:
                head = outstanding.popleft()
                if head in early:
                    early.discard(head)
                else:
                    settled += 1
        elif outstanding and outstanding[0] == tag:
            outstanding.popleft()
            settled = 1
        elif outstanding and outstanding[0] < tag <= outstanding[-1] and tag not in early:
            early.add(tag)
            settled = 1
        while outstanding and outstanding[0] in early:
            early.discard(outstanding.popleft())
        if settled == 0:
            self.bogus += 1
        elif ok:
            self.acked += settled
        else:
            self.nacked += settled
        return settled


class ConfirmClock:
    """Confirm latency: the send time of each batch of tags, and the latency of every
    message once the settled frontier (`ConfirmTracker.settled_through`) passes its tag.

    A tag acked singly ahead of the frontier is timed when the frontier reaches it (a
    slight overestimate; the brokers measured ack with `multiple`); a nacked message is timed
    like an acked one. For the failover figures it also keeps, for every settling that held
    an ack (a basic.ack, not only nacks), its time (`times_ns`) and, per batch of messages
    it settled, (send time, confirm time) in `acks_ns`.
    """

    __slots__ = ("latencies_ns", "times_ns", "acks_ns", "_batches", "_through")

    def __init__(self) -> None:
        self.latencies_ns: list[int] = []
        self.times_ns: list[int] = []
        self.acks_ns: list[tuple[int, int]] = []
        self._batches: deque[tuple[int, int, int]] = deque()  # (first tag, last tag, sent ns)
        self._through = 0

    def sent(self, first: int, last: int, now_ns: int) -> None:
        self._batches.append((first, last, now_ns))

    def settled(self, through: int, now_ns: int, acked: bool = True) -> None:
        if acked:
            self.times_ns.append(now_ns)
        if through <= self._through:
            return
        batches = self._batches
        latencies = self.latencies_ns
        while batches and batches[0][0] <= through:
            first, last, sent_ns = batches[0]
            upto = min(last, through)
            latencies.extend([now_ns - sent_ns] * (upto - max(first, self._through + 1) + 1))
            if acked:
                self.acks_ns.append((sent_ns, now_ns))
            self._through = upto
            if upto < last:
                break
            batches.popleft()
        self._through = max(self._through, through)


@dataclass(slots=True)
class PublishTally:
    """What one publisher sent (sequences 1..sent) and what the broker confirmed."""

    publisher: int
    sent: int = 0
    acked: int = 0
    nacked: int = 0
    bogus_confirms: int = 0
    # Acks received by the end of the publishing window.
    acked_in_window: int = 0
    first_ns: int = 0
    last_ns: int = 0
    # When the last in-flight message was settled after publishing stopped.
    settled_ns: int = 0
    # With `Workload.confirm_latencies`: one latency per confirmed message, and the time of
    # every confirm that settled something (see ConfirmClock).
    confirm_latencies_ns: list[int] = field(default_factory=list)
    confirm_times_ns: list[int] = field(default_factory=list)
    confirm_acks_ns: list[tuple[int, int]] = field(default_factory=list)


class ReceiveTally:
    """What one consumer really received on one queue."""

    __slots__ = (
        "queue",
        "window_end_ns",
        "unique",
        "in_window",
        "duplicates",
        "foreign",
        "out_of_order",
        "last_ns",
        "subscribed_ns",
        "latencies_ns",
        "keep_latencies",
        "arrivals_ns",
        "keep_arrivals",
        "_seen",
        "_highest",
    )

    def __init__(self, queue: str, window_end_ns: int, keep_latencies: bool = False,
                 keep_arrivals: bool = False) -> None:
        self.queue = queue
        self.window_end_ns = window_end_ns
        self.unique = 0
        self.in_window = 0
        self.duplicates = 0
        # Deliveries whose body is not a message of this run (garbled, or left over).
        self.foreign = 0
        self.last_ns = 0
        # When the consumer asked for deliveries (a backlog starts flowing then).
        self.subscribed_ns = 0
        self.latencies_ns: list[int] = []
        self.keep_latencies = keep_latencies
        # (send time, arrival time) of each stamped delivery, duplicates included (for the
        # failover figures).
        self.arrivals_ns: list[tuple[int, int]] = []
        self.keep_arrivals = keep_arrivals
        # Unique deliveries with a lower sequence than one already seen from their publisher.
        self.out_of_order = 0
        # publisher id → bitmap of sequences seen.
        self._seen: dict[int, bytearray] = {}
        # publisher id → highest sequence seen.
        self._highest: dict[int, int] = {}

    def record(self, body: bytes, now_ns: int) -> bool:
        """Count one delivered body; True when it was a new message of this run."""
        stamp = read_stamp(body)
        if stamp is None:
            self.foreign += 1
            return False
        publisher, sequence, sent_ns = stamp
        if self.keep_arrivals:
            self.arrivals_ns.append((sent_ns, now_ns))
        bitmap = self._seen.get(publisher)
        if bitmap is None:
            bitmap = self._seen[publisher] = bytearray()
        byte, bit = divmod(sequence, 8)
        if byte >= len(bitmap):
            bitmap.extend(bytes(byte + 1 - len(bitmap) + 4096))
        mask = 1 << bit
        if bitmap[byte] & mask:
            self.duplicates += 1
            return False
        bitmap[byte] |= mask
        self.unique += 1
        if sequence < self._highest.get(publisher, 0):
            self.out_of_order += 1
        else:
            self._highest[publisher] = sequence
        if now_ns <= self.window_end_ns:
            self.in_window += 1
        self.last_ns = now_ns
        if self.keep_latencies:
            self.latencies_ns.append(now_ns - sent_ns)
        return True

    def seen(self, publisher: int, sequence: int) -> bool:
        bitmap = self._seen.get(publisher)
        if bitmap is None:
            return False
        byte, bit = divmod(sequence, 8)
        return byte < len(bitmap) and bool(bitmap[byte] & (1 << bit))

    def received_from(self, publisher: int, sent: int) -> int:
        """How many of sequences 1..sent of `publisher` arrived (stamps beyond `sent` are not ours)."""
        bitmap = self._seen.get(publisher)
        if bitmap is None:
            return 0
        whole, rest = divmod(sent + 1, 8)
        count = sum(bin(b).count("1") for b in bitmap[:whole])
        if rest and whole < len(bitmap):
            count += bin(bitmap[whole] & ((1 << rest) - 1)).count("1")
        return count


@dataclass(slots=True)
class Verdict:
    """The run's totals; `delivered` counts only unique, stamped messages that arrived."""

    sent: int = 0
    acked: int = 0
    nacked: int = 0
    delivered: int = 0
    delivered_in_window: int = 0
    expected: int = 0
    missing: int = 0
    # Confirmed by the broker, yet never delivered: a lost message.
    lost_confirmed: int = 0
    duplicates: int = 0
    foreign: int = 0
    out_of_order: int = 0
    bogus_confirms: int = 0
    problems: list[str] = field(default_factory=list)


def verdict(publishers: list[PublishTally], receivers: list[ReceiveTally], confirmed_only: bool = False) -> Verdict:
    """Compare what was sent with what every queue's consumer received.

    Each receiver stands for one queue that every publisher's messages are routed
    to (1 queue, or every queue bound to a fanout exchange). `confirmed_only`
    leaves unconfirmed messages out of `missing` for a broker that is allowed to
    drop them (none of our scenarios are).
    """
    result = Verdict()
    for pub in publishers:
        result.sent += pub.sent
        result.acked += pub.acked
        result.nacked += pub.nacked
        result.bogus_confirms += pub.bogus_confirms
    for receiver in receivers:
        result.duplicates += receiver.duplicates
        result.foreign += receiver.foreign
        result.out_of_order += receiver.out_of_order
        delivered_here = 0
        for pub in publishers:
            got = receiver.received_from(pub.publisher, pub.sent)
            delivered_here += got
            result.expected += pub.acked if confirmed_only else pub.sent
            result.missing += (pub.acked if confirmed_only else pub.sent) - got
            if pub.acked:
                # Tags 1..sent were confirmed except the nacked/outstanding ones; a
                # missing message whose tag was acked is lost. Counted coarsely: any
                # shortfall beyond what was not acked.
                result.lost_confirmed += max(0, pub.acked - got)
        # Stamps naming sequences we never sent (a broker inventing messages) are
        # not in delivered_here; they count as foreign.
        result.foreign += receiver.unique - delivered_here
        result.delivered += delivered_here
        result.delivered_in_window += min(receiver.in_window, delivered_here)
    result.missing = max(0, result.missing)
    if result.missing:
        result.problems.append(f"{result.missing} of {result.expected} expected deliveries never arrived")
    if result.lost_confirmed:
        result.problems.append(f"{result.lost_confirmed} confirmed messages were never delivered")
    if result.nacked:
        result.problems.append(f"broker nacked {result.nacked} messages")
    if result.duplicates:
        result.problems.append(f"{result.duplicates} duplicate deliveries (not counted)")
    if result.out_of_order:
        result.problems.append(f"{result.out_of_order} deliveries arrived before a message published earlier")
    if result.foreign:
        result.problems.append(f"{result.foreign} deliveries that this run never published (not counted)")
    if result.bogus_confirms:
        result.problems.append(f"{result.bogus_confirms} confirms for tags never published or already settled")
    return result
