"""Paging through userIds in one order every node agrees on.

The order is code point order, which for UTF-8 is the byte order Redis's ZRANGEBYLEX
gives, so a page read from this node's model and a page read from Redis line up, and a
cursor (the last userId of the page before) continues on any node. Pure."""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from itertools import takewhile


def page_after(
    ids: Iterable[str], limit: int, after: str | None = None, prefix: str = ""
) -> tuple[list[str], str | None]:
    """The first ``limit`` ids (in order) that come after ``after`` and start with
    ``prefix``, and the cursor for the next page: the page's last id if more follow, else
    None. O(n log limit): one pass, no full sort."""
    if limit < 1:
        raise ValueError("limit must be at least 1")
    chosen = heapq.nsmallest(
        limit + 1,
        (u for u in ids if (after is None or u > after) and u.startswith(prefix)),
    )
    page = chosen[:limit]
    return page, (page[-1] if len(chosen) > limit else None)


class SortedIds:
    """``page_after`` over a set of ids that changes now and then: a sorted copy, made
    again only when the set's ``version`` moved, and each page found by bisection. A
    backend walking every page of a quiet set pays one sort, not one pass per page."""

    def __init__(self) -> None:
        self._version: int | None = None
        self._ids: list[str] = []

    def page(
        self,
        ids: Iterable[str],
        version: int,
        limit: int,
        after: str | None = None,
        prefix: str = "",
    ) -> tuple[list[str], str | None]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if version != self._version:
            self._ids, self._version = sorted(ids), version
        sorted_ids = self._ids
        if after is not None and after >= prefix:
            start = bisect_right(sorted_ids, after)
        else:
            start = bisect_left(sorted_ids, prefix)
        chosen = sorted_ids[start : start + limit + 1]
        if prefix:
            chosen = list(takewhile(lambda u: u.startswith(prefix), chosen))
        page = chosen[:limit]
        return page, (page[-1] if len(chosen) > limit else None)


def lex_start(after: str | None, prefix: str) -> str:
    """Where a ZRANGEBYLEX over the ids starts for this page: just after ``after``, or at
    ``prefix`` when the cursor is before the prefix's range (or there is none)."""
    if after is not None and after >= prefix:
        return "(" + after
    return "[" + prefix if prefix else "-"
