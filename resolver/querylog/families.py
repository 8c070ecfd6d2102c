"""Vendor families of names: the registrable domain ("miui.com" for "tracking.intl.miui.com").

Why built in and small: the full Public Suffix List is a 200 kB download that
changes weekly; the inventory and ``lists suggest`` only need to group a
household's names by owner.  The common multi-label public suffixes (country
second levels) and the shared hosting suffixes (where every subdomain has a
different owner, so grouping them would be wrong) are listed here; everything
else is grouped by its last two labels.
"""

from __future__ import annotations


def _words(text: str) -> list[str]:
    return text.split()


# Second-level public suffixes: names under them are registered one label deeper.
MULTI_LABEL_SUFFIXES = frozenset(_words("""
co.uk org.uk ac.uk gov.uk me.uk net.uk ltd.uk plc.uk
com.cn net.cn org.cn gov.cn edu.cn ac.cn
com.hk net.hk org.hk com.tw net.tw org.tw idv.tw
co.jp ne.jp or.jp ac.jp go.jp gr.jp
co.kr or.kr ne.kr re.kr
com.au net.au org.au edu.au gov.au id.au
co.nz net.nz org.nz
co.in net.in org.in firm.in gen.in ind.in
com.br net.br org.br com.mx com.ar com.co com.pe com.ve com.uy
com.sg com.my com.ph com.vn com.tr com.sa com.eg com.pk com.ng com.ua
co.za co.id co.il co.th ac.th in.th or.th
com.ru net.ru org.ru com.pl net.pl
"""))

# Shared hosting: each subdomain is a separate owner (PSL's private section, the common ones).
HOSTING_SUFFIXES = frozenset(_words("""
cloudfront.net amazonaws.com elasticbeanstalk.com awsglobalaccelerator.com
azurewebsites.net azureedge.net cloudapp.net trafficmanager.net blob.core.windows.net
appspot.com googleusercontent.com firebaseapp.com web.app run.app
herokuapp.com github.io gitlab.io netlify.app vercel.app pages.dev workers.dev
fastly.net global.ssl.fastly.net akamaized.net akamaihd.net edgesuite.net edgekey.net
duckdns.org dyndns.org no-ip.org ngrok.io
"""))


def family(name: str) -> str:
    """The registrable domain of ``name`` (lower case, no trailing dot); a bare label is itself."""
    labels = name.lower().rstrip(".").split(".")
    if len(labels) <= 2:
        return ".".join(labels)
    # The longest known suffix decides how many labels belong to the owner.
    for depth in range(min(len(labels) - 1, 4), 1, -1):
        suffix = ".".join(labels[-depth:])
        if suffix in HOSTING_SUFFIXES or suffix in MULTI_LABEL_SUFFIXES:
            return ".".join(labels[-depth - 1:])
    return ".".join(labels[-2:])


def vendor_of_list(list_name: str) -> str:
    """A list's vendor: ``xiaomi-strict`` -> ``xiaomi`` (the curated lists' tier suffix dropped)."""
    return list_name.removesuffix("-strict")
