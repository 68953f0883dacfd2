"""Hypothesis strategies for AMQP values, methods and properties, plus pamqp adapters.

Two domains: the full wire domain (what our codec must carry), and the narrower
"pamqp-safe" domain that pamqp's constructors accept (it validates names against
a regex, pins reserved fields, and rejects some property values) and decodes
without its own quirks (pamqp reads 'T' values above 2^32 as milliseconds).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st
from pamqp import commands as pc

from broker.amqp import spec
from broker.amqp.codec import Timestamp

UTC = dt.timezone.utc


def shortstr(max_octets: int = 255) -> st.SearchStrategy[str]:
    return st.text(max_size=60).filter(lambda s: len(s.encode("utf-8")) <= max_octets)


# pamqp's exchange-name / queue-name regex, and its 127-character limit.
PAMQP_NAME = st.text(alphabet="abcXYZ019-_.:@#,/+ ", max_size=40)

DOMAIN = {
    "octet": st.integers(0, 0xFF),
    "short": st.integers(0, 0xFFFF),
    "long": st.integers(0, 0xFFFFFFFF),
    "longlong": st.integers(0, 0xFFFFFFFFFFFFFFFF),
    "bit": st.booleans(),
    "shortstr": shortstr(),
    "longstr": st.binary(max_size=80),
}

_KEYS = st.text(max_size=12).filter(lambda s: len(s.encode("utf-8")) <= 255)
_DATETIMES = st.integers(0, 0xFFFFFFFF).map(lambda s: dt.datetime.fromtimestamp(s, UTC))
_DECIMALS = st.builds(lambda m, s: Decimal(m).scaleb(-s), st.integers(0, 0xFFFFFFFF), st.integers(0, 20))


def field_scalars(*, pamqp_safe: bool) -> st.SearchStrategy[Any]:
    options = [
        st.text(max_size=30),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        st.none(),
        _DECIMALS,
        _DATETIMES,
    ]
    if pamqp_safe:
        # pamqp encodes only bytearray as 'x', and decodes 'x' as bytearray.
        options.append(st.binary(max_size=20).map(bytearray))
        # pamqp's decimal encoder is signed 32-bit.
        # pamqp writes every float as a 32-bit 'f'.
        options[3] = st.floats(allow_nan=False, allow_infinity=False, width=32)
        options[5] = st.builds(lambda m, s: Decimal(m).scaleb(-s), st.integers(0, 2**31 - 1), st.integers(0, 20))
    else:
        options.append(st.binary(max_size=20))
        options.append(st.integers(_MAX_DT + 1, 2**64 - 1).map(Timestamp))
    return st.one_of(options)


_MAX_DT = 253402300799


def field_tables(*, pamqp_safe: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    values = st.recursive(
        field_scalars(pamqp_safe=pamqp_safe),
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
        max_leaves=12,
    )
    return st.dictionaries(_KEYS, values, max_size=6)


def normalise(value: Any) -> Any:
    """Comparable form: bytearray → bytes, Timestamp → int, containers recursively."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, Timestamp):
        return int(value)
    return value


# Reserved fields: pamqp pins them; the wire domain allows any value.
_PAMQP_PINNED: dict[str, Any] = {
    "ticket": 0,
    "capabilities": "",
    "insist": False,
    "known_hosts": "",
    "out_of_band": "0",
    "channel_id": b"0",
    "cluster_id": "",
}
_PAMQP_NAMES = {"exchange", "queue", "destination", "source"}


@st.composite
def methods(draw: st.DrawFn, cls: type[spec.Method], *, pamqp_safe: bool = False) -> spec.Method:
    values = []
    for name, domain in zip(cls.FIELD_NAMES, cls.ARGUMENTS):
        if pamqp_safe and name in _PAMQP_PINNED:
            values.append(_PAMQP_PINNED[name])
        elif pamqp_safe and name in _PAMQP_NAMES:
            values.append(draw(PAMQP_NAME))
        elif pamqp_safe and name == "virtual_host":
            values.append(draw(st.text(max_size=100)))
        elif domain == "table":
            values.append(draw(field_tables(pamqp_safe=pamqp_safe)))
        elif pamqp_safe and domain == "longlong":
            # pamqp reads longlong as signed; the spec and RabbitMQ say unsigned.
            values.append(draw(st.integers(0, 2**63 - 1)))
        elif pamqp_safe and domain == "longstr":
            # pamqp encodes long strings from str only.
            values.append(draw(st.text(max_size=40)).encode("utf-8"))
        else:
            values.append(draw(DOMAIN[domain]))
    return cls(*values)


ALL_METHODS = sorted(spec.METHODS.values(), key=lambda c: (c.CLASS_ID, c.METHOD_ID))

# Our field name → pamqp attribute name, where they differ.
_PAMQP_ATTR = {"type": "exchange_type"}


def pamqp_class(cls: type[spec.Method]) -> type:
    return pc.INDEX_MAPPING[(cls.CLASS_ID << 16) | cls.METHOD_ID]


def to_pamqp(method: spec.Method) -> Any:
    kwargs = {}
    for name, domain in zip(method.FIELD_NAMES, method.ARGUMENTS):
        value = getattr(method, name)
        if domain == "longstr":
            value = value.decode("utf-8")
        kwargs[_PAMQP_ATTR.get(name, name)] = value
    return pamqp_class(type(method))(**kwargs)


def pamqp_fields(cls: type[spec.Method], obj: Any) -> dict[str, Any]:
    """pamqp's decoded attributes under our names, long strings as bytes."""
    out = {}
    for name, domain in zip(cls.FIELD_NAMES, cls.ARGUMENTS):
        value = getattr(obj, _PAMQP_ATTR.get(name, name))
        if domain == "longstr" and isinstance(value, str):
            value = value.encode("utf-8")
        out[name] = normalise(value)
    return out


def our_fields(method: spec.Method) -> dict[str, Any]:
    return {name: normalise(getattr(method, name)) for name in method.FIELD_NAMES}


# --- properties --------------------------------------------------------------------------

PROPERTY_NAMES = [name for name, _, _ in spec.BASIC_PROPERTIES]
_PROPERTY_VALUES = {
    "shortstr": shortstr(),
    "octet": st.integers(0, 255),
    "longlong": st.integers(0, 2**64 - 1),
}


@st.composite
def properties(draw: st.DrawFn, *, pamqp_safe: bool = False) -> spec.BasicProperties:
    props = spec.BasicProperties()
    for name, domain, _bit in spec.BASIC_PROPERTIES:
        if not draw(st.booleans()):
            continue
        if domain == "table":
            value: Any = draw(field_tables(pamqp_safe=pamqp_safe))
        elif pamqp_safe and name == "delivery_mode":
            value = draw(st.sampled_from([1, 2]))
        elif pamqp_safe and name == "cluster_id":
            continue  # pamqp refuses any cluster_id
        elif pamqp_safe and name == "timestamp":
            value = draw(st.integers(0, 0xFFFFFFFF))
        elif pamqp_safe and domain == "shortstr":
            value = draw(shortstr().filter(bool))  # pamqp treats "" as absent
        else:
            value = draw(_PROPERTY_VALUES[domain])
        setattr(props, name, value)
    return props


def pamqp_properties(props: spec.BasicProperties) -> pc.Basic.Properties:
    kwargs = {}
    for name in PROPERTY_NAMES:
        value = getattr(props, name)
        if value is None:
            continue
        if name == "timestamp":
            value = dt.datetime.fromtimestamp(value, UTC)
        kwargs["message_type" if name == "type" else name] = value
    return pc.Basic.Properties(**kwargs)


def from_pamqp_properties(obj: Any) -> dict[str, Any]:
    out = {}
    for name in PROPERTY_NAMES:
        value = getattr(obj, "message_type" if name == "type" else name, None)
        if name == "timestamp" and value is not None:
            value = int(value.timestamp())
        if value == "" and name == "cluster_id":
            value = None
        out[name] = normalise(value)
    return out
