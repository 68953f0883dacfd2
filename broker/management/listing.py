"""Pagination, name filtering, sorting and column selection of list answers, as
rabbit_mgmt_util does them (pure).

Without `page` a list is answered as a JSON array; with it, as RabbitMQ's page object
(`filtered_count`, `item_count`, `items`, `page`, `page_count`, `page_size`,
`total_count`). `columns` keeps the named keys (dotted paths reach into nested objects,
as `message_stats.publish`); `sort` orders by a dotted path, `sort_reverse` reverses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from broker.management.errors import ApiError, bad_request

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500


@dataclass(frozen=True, slots=True)
class ListQuery:
    page: int | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    name: str | None = None
    use_regex: bool = False
    sort: str | None = None
    sort_reverse: bool = False
    columns: tuple[str, ...] = ()


def parse_bool(text: str | None) -> bool:
    return (text or "").lower() == "true"


def parse_list_query(params: Mapping[str, str]) -> ListQuery | ApiError:
    columns = tuple(c for c in (params.get("columns") or "").split(",") if c)
    sort = params.get("sort") or None
    sort_reverse = parse_bool(params.get("sort_reverse"))
    if "page" not in params:
        return ListQuery(sort=sort, sort_reverse=sort_reverse, columns=columns)
    page_text, size_text = params.get("page", ""), params.get("page_size", str(DEFAULT_PAGE_SIZE))
    try:
        page, page_size = int(page_text), int(size_text)
    except ValueError:
        return ApiError(400, "invalid_pagination_parameters",
                        f"Invalid pagination parameters: page number {page_text}, page size {size_text}")
    if page < 1 or not 1 <= page_size <= MAX_PAGE_SIZE:
        return ApiError(400, "invalid_pagination_parameters",
                        f"Invalid pagination parameters: page number {page}, page size {page_size}")
    name = params.get("name") or None
    use_regex = parse_bool(params.get("use_regex"))
    if name is not None and use_regex:
        try:
            re.compile(name)
        except re.error as exc:
            return bad_request(f"invalid regular expression '{name}': {exc}")
    return ListQuery(page, page_size, name, use_regex, sort, sort_reverse, columns)


_MISSING = object()


def _lookup(item: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, `_MISSING` where there is none."""
    value: Any = item
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def dotted(item: Mapping[str, Any], path: str) -> Any:
    value = _lookup(item, path)
    return None if value is _MISSING else value


def _sort_key(value: Any) -> tuple[int, Any]:
    # Missing values sort first, then numbers, then text (mixed types never compare).
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (1, value)
    return (2, str(value))


def select_columns(item: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Any]:
    """The named columns of an item, nested as they were (`a.b` keeps {"a": {"b": ...}})."""
    out: dict[str, Any] = {}
    for column in columns:
        value = _lookup(item, column)
        if value is _MISSING:
            continue
        parts = column.split(".")
        target = out
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = value
    return out


def _name_matches(query: ListQuery, item: Mapping[str, Any]) -> bool:
    if query.name is None:
        return True
    name = str(item.get("name", ""))
    if query.use_regex:
        return re.search(query.name, name) is not None
    return query.name in name


def apply_list_query(items: list[dict[str, Any]], query: ListQuery) -> list[dict[str, Any]] | dict[str, Any] | ApiError:
    """The answer to a list request: the items sorted, filtered, paged and cut to columns."""
    if query.sort:
        items = sorted(items, key=lambda i: _sort_key(dotted(i, query.sort or "")), reverse=query.sort_reverse)
    elif query.sort_reverse:
        items = list(reversed(items))
    if query.page is None:
        return [select_columns(i, query.columns) for i in items] if query.columns else items
    total = len(items)
    filtered = [i for i in items if _name_matches(query, i)]
    page_count = max(1, math.ceil(len(filtered) / query.page_size))
    if query.page > page_count:
        return ApiError(400, "page_out_of_range",
                        f"Page out of range, page: {query.page} page size: {query.page_size}, len: {len(filtered)}")
    start = (query.page - 1) * query.page_size
    page_items = filtered[start:start + query.page_size]
    if query.columns:
        page_items = [select_columns(i, query.columns) for i in page_items]
    return {
        "filtered_count": len(filtered),
        "item_count": len(page_items),
        "items": page_items,
        "page": query.page,
        "page_count": page_count,
        "page_size": query.page_size,
        "total_count": total,
    }
