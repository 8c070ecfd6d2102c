"""names.Zones: the one-lookup reject gives exactly what the suffix walk (in_zones) gives."""

from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.names import Zones, in_zones

LABELS = st.sampled_from(["a", "b", "dns", "google", "com", "lan", "x-y", "cloudflare-dns"])
NAMES = st.lists(LABELS, min_size=1, max_size=5).map(".".join)


@settings(max_examples=400, deadline=None)
@given(zones=st.sets(NAMES, max_size=6), name=NAMES)
def test_find_equals_the_suffix_walk(zones: set[str], name: str) -> None:
    assert Zones(zones).find(name) == in_zones(name, zones)


def test_single_label_zones_and_longest_match() -> None:
    z = Zones({"lan", "dns.google", "a.dns.google"})
    assert z.find("nas.lan") == "lan"
    assert z.find("lan") == "lan"
    assert z.find("b.a.dns.google") == "a.dns.google"
    assert z.find("dns.google") == "dns.google"
    assert z.find("google") is None
    assert z.find("example.com") is None
    assert "lan" in z and len(z) == 3
