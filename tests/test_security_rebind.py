"""DNS rebinding protection: private addresses in answers for public names are removed."""

from __future__ import annotations

import ipaddress

import dns.rcode
import dns.rdatatype
import dnslib
import pytest

from resolver.config import ConfigError, load_config
from resolver.lists.loader import Blocklists
from resolver.pipeline import build_pipeline
from resolver.stages.rebind import Rebind, private_v4, private_v6
from resolver.stats import Stats
from tests.conftest import ask
from tests.fakes import FakeUpstream

PRIVATE = ["0.0.0.0", "10.1.2.3", "100.64.0.1", "127.0.0.1", "169.254.1.1", "172.16.0.1",
           "172.31.255.255", "192.168.1.1"]
PUBLIC = ["203.0.113.5", "192.0.2.1", "172.32.0.1", "100.128.0.1", "11.0.0.1"]
PRIVATE6 = ["::1", "::", "fe80::1", "fd00::1", "fc00::1", "::ffff:192.168.1.1", "::ffff:8.8.8.8"]
PUBLIC6 = ["2001:db8::5", "2606:4700::1111", "fec0::1"]


def mixed(q: dnslib.DNSRecord) -> dnslib.DNSRecord:
    """Every name resolves to a mix of public and private addresses."""
    r = q.reply()
    name = q.q.qname
    label = str(name).split(".")[0]
    if q.q.qtype == dnslib.QTYPE.A:
        addrs = PRIVATE if label.startswith("allpriv") else PRIVATE + PUBLIC
        for a in addrs:
            r.add_answer(dnslib.RR(name, dnslib.QTYPE.A, ttl=300, rdata=dnslib.A(a)))
    elif q.q.qtype == dnslib.QTYPE.AAAA:
        for a in PRIVATE6 + PUBLIC6:
            r.add_answer(dnslib.RR(name, dnslib.QTYPE.AAAA, ttl=300, rdata=dnslib.AAAA(tuple(ipaddress.ip_address(a).packed))))
    elif q.q.qtype == dnslib.QTYPE.MX:
        # A private address in the additional section (glue for the MX target).
        r.add_answer(dnslib.RR(name, dnslib.QTYPE.MX, ttl=300, rdata=dnslib.MX("mail." + str(name))))
        r.add_ar(dnslib.RR("mail." + str(name), dnslib.QTYPE.A, ttl=300, rdata=dnslib.A("10.0.0.25")))
        r.add_ar(dnslib.RR("mail." + str(name), dnslib.QTYPE.A, ttl=300, rdata=dnslib.A("203.0.113.25")))
    return r


def addrs(msg, section: str = "answer") -> set[str]:
    return {rd.address for rrset in getattr(msg, section) for rd in rrset
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)}


@pytest.fixture
def rebinding():
    up = FakeUpstream(answer=mixed)
    yield up
    up.close()


def test_private_addresses_removed_from_public_answers(serve, rebinding):
    lan = FakeUpstream(answer=mixed)
    try:
        srv = serve("rebind_protection: {enabled: true, allow_zones: [home.arpa, Lan.]}\n"
                    f'forward_zones: {{corp.example: ["{lan.address}"]}}\n', up=rebinding)
        for _ in range(2):   # forwarded, then from the cache: the cleaned answer was cached
            r = ask(srv, "attacker.test")
            assert r.rcode() == dns.rcode.NOERROR
            assert addrs(r) == set(PUBLIC)
            r6 = ask(srv, "attacker.test", "AAAA")
            assert addrs(r6) == set(PUBLIC6)
        assert len(rebinding.queries()) == 2
        assert srv.stats.rebind_removed == len(PRIVATE) + len(PRIVATE6)

        # Only private addresses: the answer becomes NODATA, with an EDE saying why.
        r = ask(srv, "allpriv.attacker.test", edns=True)
        assert r.rcode() == dns.rcode.NOERROR and not r.answer
        assert [o.code for o in r.options if o.otype == 15] == [15]

        # Glue in the additional section is cleaned too.  (Asked with DO: with minimal
        # responses, the default, a DO=0 client gets no additional section at all.)
        r = ask(srv, "mx.attacker.test", "MX", dnssec=True)
        assert addrs(r, "additional") == {"203.0.113.25"}

        # The LAN's own zones keep their private answers: allow_zones, subdomains, forward zones.
        for name in ("nas.lan", "printer.office.home.arpa", "lan", "localhost"):
            assert addrs(ask(srv, name)) == set(PRIVATE + PUBLIC), name
        assert addrs(ask(srv, "git.corp.example")) == set(PRIVATE + PUBLIC)
        assert len(lan.queries()) == 1
        # ... but a name that merely ends in the same letters is public.
        assert addrs(ask(srv, "evil-lan")) == set(PUBLIC)
    finally:
        lan.close()


def test_off_by_default_and_left_out_of_the_pipeline(serve, rebinding, tmp_path):
    srv = serve(up=rebinding)
    assert addrs(ask(srv, "attacker.test")) == set(PRIVATE + PUBLIC)

    for text, present in (("", False), ("rebind_protection: false", False),
                          ("rebind_protection: true", True)):
        cfg = load_config(None, text=f"upstreams: [127.0.0.1]\nblocking: {{}}\n{text}")
        pipeline = build_pipeline(cfg, Blocklists(), Stats())
        assert (Rebind in map(type, pipeline.stages)) is present, text


@pytest.mark.parametrize("bad", [
    "rebind_protection: yes please",
    "rebind_protection: {allow_zones: ['bad..zone']}",
    "rebind_protection: {enabled: 1}",
    "rebind_protection: {allow: [lan]}",
])
def test_config_errors_name_the_key(bad):
    with pytest.raises(ConfigError) as exc:
        load_config(None, text=f"upstreams: [127.0.0.1]\n{bad}")
    assert "rebind_protection" in str(exc.value)


def _edges(net):
    """First and last address of a network and their neighbours outside it."""
    lo, hi = int(net.network_address), int(net.broadcast_address)
    top = 2 ** net.max_prefixlen - 1
    cls = type(net.network_address)
    return [cls(i) for i in {max(lo - 1, 0), lo, hi, min(hi + 1, top)}]


def test_address_classes_match_ipaddress():
    """The byte-level checks agree with the ipaddress module on the edges of every range."""
    nets4 = [ipaddress.ip_network(n) for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.168.0.0/16")]
    for net in nets4:
        for ip in _edges(net):
            assert private_v4(ip.packed) is any(ip in n for n in nets4), ip
    nets6 = [ipaddress.ip_network(n) for n in ("::/128", "::1/128", "fc00::/7", "fe80::/10",
                                               "::ffff:0:0/96")]
    for net in nets6:
        for ip in _edges(net):
            assert private_v6(ip.packed) is any(ip in n for n in nets6), ip
