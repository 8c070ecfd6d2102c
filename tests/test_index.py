"""DomainIndex (a set of names plus masks for the minority) against a plain model.

The model is the obvious structure: one dict from domain to the mask of every
list that holds it.  The index stores only the masks that differ from the
commonest one, and re-chooses that mask as lists are added; whatever order and
overlap the lists come in, ``match``, ``explain``, ``mask_of`` and
``domains_of`` must give what the model gives.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.lists.index import DomainIndex, Match
from resolver.lists.parse import Parsed

# A small universe of names with shared suffixes, so that lists overlap and
# queries walk through several listed parents.
LABELS = ("a", "b", "ads", "t")

def _names() -> list[str]:
    out = []
    for x in LABELS:
        out.append(x)
        for y in LABELS:
            out.append(f"{y}.{x}")
            for z in LABELS:
                out.append(f"{z}.{y}.{x}")
    return out


NAMES = _names()


def model_match(lists: list[tuple[int, list[str], bool]], name: str, block: int,
                allow: int) -> Match | None:
    """The reference: a dict of masks and the documented rules, written plainly."""
    masks: dict[str, int] = {}
    for bit, names, _ in lists:
        for n in names:
            masks[n] = masks.get(n, 0) | bit
    suffixes = [".".join(name.split(".")[i:]) for i in range(name.count(".") + 1)]
    if any(masks.get(s, 0) & allow for s in suffixes):
        return None
    for s in suffixes:               # most specific first
        v = masks.get(s, 0) & block
        if v:
            return Match(v & -v, s, False)
    return None


lists_strategy = st.lists(
    st.tuples(st.lists(st.sampled_from(NAMES), max_size=40), st.booleans()),
    min_size=1, max_size=5)


@settings(max_examples=300, deadline=None)
@given(specs=lists_strategy, queries=st.lists(st.sampled_from(NAMES), min_size=1, max_size=20),
       block=st.integers(0, 31), allow=st.integers(0, 31))
def test_index_matches_the_model(specs: list[tuple[list[str], bool]], queries: list[str],
                                 block: int, allow: int) -> None:
    idx = DomainIndex()
    lists = []
    for i, (names, is_allow) in enumerate(specs):
        bit = 1 << i
        idx.add(bit, Parsed(domains=list(names)), allow=is_allow)
        lists.append((bit, names, is_allow))
    allow_bits = sum(bit for bit, _, a in lists if a)
    group_allow = allow & allow_bits
    group_block = block & ~allow_bits
    everything = {n for _, names, _ in lists for n in names}
    assert len(idx) == len(everything)
    for bit, names, _ in lists:
        assert sorted(idx.domains_of(bit)) == sorted(set(names))
    for name in NAMES:
        assert idx.mask_of(name) == sum(bit for bit, names, _ in lists if name in names)
    for q in queries:
        for sub in (q, f"x.{q}"):
            got = idx.match(sub, group_block, group_allow)
            want = model_match(lists, sub, group_block, group_allow)
            assert got == want, (sub, got, want)
            ex = idx.explain(sub, group_block, group_allow)
            if want is not None:
                assert ex == want
            elif any(idx.mask_of(s) & group_allow
                     for s in (".".join(sub.split(".")[i:]) for i in range(sub.count(".") + 1))):
                assert ex is not None and ex.allow and ex.bit & group_allow
            else:
                assert ex is None


def test_the_commonest_mask_is_implicit_whatever_the_order_of_lists() -> None:
    """A small list first and a big one second: the big one's names need no stored mask."""
    small = [f"s{i}.example" for i in range(10)]
    big = [f"b{i}.example" for i in range(1000)] + small[:5]
    idx = DomainIndex()
    idx.add(1, Parsed(domains=small), allow=True)
    idx.add(2, Parsed(domains=big))
    assert idx.common == 2
    assert len(idx.masks) == 10            # the small list's names, with their own masks
    assert idx.mask_of("s1.example") == 3 and idx.mask_of("s7.example") == 1
    assert idx.match("x.s1.example", 2, 1) is None            # allowed
    hit = idx.match("x.b9.example", 2, 1)
    assert hit == Match(2, "b9.example", False)
    assert idx.mask_of("nothing.example") == 0


def test_one_list_stores_no_masks() -> None:
    idx = DomainIndex()
    idx.add(4, Parsed(domains=["t.example", "u.example", "t.example"]))
    assert idx.masks == {} and idx.common == 4 and len(idx) == 2
    assert idx.match("a.t.example", 4, 0) == Match(4, "t.example", False)
    assert idx.match("a.t.example", 1, 0) is None
