"""The order /presence/online pages in: code point order, the same as the byte order of
the UTF-8 that Redis's ZRANGEBYLEX sorts, so pages from any node line up."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from presence.core.model import PresenceModel
from presence.core.paging import SortedIds, lex_start, page_after
from presence.core.wire import Shared

ids = st.sets(
    st.text(st.characters(blacklist_categories=["Cs", "Zs", "Cc"]), min_size=1, max_size=6),
    max_size=40,
)


def walk(users: set[str], limit: int, prefix: str = "") -> list[str]:
    seen: list[str] = []
    after = None
    while True:
        page, after = page_after(users, limit, after, prefix)
        assert len(page) <= limit
        seen += page
        if after is None:
            return seen
        assert page and after == page[-1]


@given(ids, st.integers(1, 12), st.sampled_from(["", "a", "é", "ab", "\U0001f600"]))
def test_the_pages_cover_every_id_once_in_order(users: set[str], limit: int, prefix: str) -> None:
    want = sorted(u for u in users if u.startswith(prefix))
    assert walk(users, limit, prefix) == want


@given(ids)
def test_code_point_order_is_utf8_byte_order(users: set[str]) -> None:
    assert sorted(users) == sorted(users, key=lambda u: u.encode())


@given(ids, st.text(max_size=3), st.sampled_from(["", "a", "b"]))
def test_a_cursor_before_the_prefix_starts_at_the_prefix(
    users: set[str], after: str, prefix: str
) -> None:
    page, _ = page_after(users, 1000, after or None, prefix)
    assert page == sorted(u for u in users if u.startswith(prefix) and (not after or u > after))


@given(
    st.lists(ids, min_size=1, max_size=4),
    st.integers(1, 12),
    st.sampled_from(["", "a", "é", "ab"]),
    st.one_of(st.none(), st.text(max_size=3)),
)
def test_the_cached_order_pages_as_page_after_does(
    sets: list[set[str]], limit: int, prefix: str, after: str | None
) -> None:
    index = SortedIds()
    for version, users in enumerate(sets):
        for cursor in (after, None):
            assert index.page(users, version, limit, cursor, prefix) == page_after(
                users, limit, cursor, prefix
            )
        walked: list[str] = []
        cursor = None
        while True:
            page, cursor = index.page(users, version, limit, cursor, prefix)
            walked += page
            if cursor is None:
                break
        assert walked == sorted(u for u in users if u.startswith(prefix))


def test_the_cached_order_is_sorted_again_only_when_the_version_moves() -> None:
    index = SortedIds()
    assert index.page({"b", "a"}, 1, 10) == (["a", "b"], None)
    assert index.page({"b", "a", "c"}, 1, 10) == (["a", "b"], None)  # same version: cached
    assert index.page({"b", "a", "c"}, 2, 10) == (["a", "b", "c"], None)
    with pytest.raises(ValueError):
        index.page({"a"}, 2, 0)


def test_a_full_last_page_has_no_cursor() -> None:
    assert page_after(["b", "a"], 2) == (["a", "b"], None)
    assert page_after(["b", "a", "c"], 2) == (["a", "b"], "b")
    assert page_after([], 5) == ([], None)
    with pytest.raises(ValueError):
        page_after(["a"], 0)


def test_lex_start() -> None:
    assert lex_start(None, "") == "-"
    assert lex_start(None, "ab") == "[ab"
    assert lex_start("abc", "ab") == "(abc"
    assert lex_start("aa", "ab") == "[ab"  # before the prefix's range
    assert lex_start("z", "ab") == "(z"  # after it: an empty page


class Nobody:
    def send(self, data: bytes) -> None: ...
    def send_shared(self, message: Shared) -> None: ...
    def close(self, code: int, reason: str) -> None: ...


def test_the_model_lists_present_users_grace_included() -> None:
    model = PresenceModel(offline_grace=10)
    a, _ = model.open("c1", "alice", Nobody(), 0)
    model.open("c2", "bob", Nobody(), 0)
    c, _ = model.open("c3", "carol", Nobody(), 0)
    model.close(a, 1, clean=False)  # in the grace: still present
    model.close(c, 1, clean=True)  # gone
    assert sorted(model.present()) == ["alice", "bob"]
    version = model.present_version
    model.open("c4", "bob", Nobody(), 2)  # a second connection: not a new present user
    assert model.present_version == version
    model.expire(12)
    assert sorted(model.present()) == ["bob"]
    assert model.present_version == version + 1
