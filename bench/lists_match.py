"""What the bundled lists cost per query: the blocking stage's match, this checkout beside another.

    python bench/lists_match.py [--base DIR] [--number 200000] [--rounds 3]

Why: the bundled lists grow (families as anchored regexes, more subtrees), and every
query a household sends — most of them for names on no list — pays the suffix walk
and, when a group has regex rules, the regex set.  bench/run.py measures with a
generated 100k-name list and cannot see that cost.  This loads the embedded default
config (and the ``--strict`` profile) of each checkout in its own subprocess, then
times ``DomainIndex.match`` in thread CPU time on three kinds of names: unlisted
(ordinary traffic), listed exactly, and first-sight subdomains of listed names.
Checkouts alternate per round (this, base, this, ...) and medians are printed, so
a shared machine's noise hits both alike.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, random, sys, time
sys.path.insert(0, sys.argv[1])
from resolver import bundled
from resolver.config import load_config
from resolver.lists.loader import load_all

number = int(sys.argv[2])
out = {}
for profile, text in (("default", None), ("strict", bundled.strict_config_text())):
    cfg = load_config(None, text=text)
    lists = load_all(cfg)
    index = lists.index
    block = 0
    for info in lists.lists.values():
        block |= info.bit
    rng = random.Random(3)
    listed = sorted(n for n in index.names)[:5000] if hasattr(index, "names") else []
    ordinary = [f"{rng.choice(['www', 'api', 'cdn', 'img', 'mail'])}{i}."
                f"{rng.choice(['example', 'news-site', 'shop', 'video', 'bank'])}"
                f"{i % 997}.{rng.choice(['com', 'net', 'org', 'de', 'co.uk'])}"
                for i in range(5000)]
    fresh = [f"x{i}.{rng.choice(listed)}" for i in range(5000)] if listed else []
    row = {"rules": len(index.names) if hasattr(index, "names") else 0}
    for kind, names in (("unlisted", ordinary), ("listed", listed), ("subdomain", fresh)):
        if not names:
            continue
        match = index.match
        reps = max(1, number // len(names))
        best = None
        for _ in range(3):
            t = time.thread_time()
            for _ in range(reps):
                for n in names:
                    match(n, block, 0)
            dt = (time.thread_time() - t) / (reps * len(names)) * 1e6
            best = dt if best is None else min(best, dt)
        row[kind] = best
    out[profile] = row
print(json.dumps(out))
"""


def measure(root: Path, number: int) -> dict:
    res = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(number)],
                         capture_output=True, text=True, check=True, cwd=root)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, default=None, help="another checkout, measured alongside")
    ap.add_argument("--number", type=int, default=200_000, help="matches per kind and round")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    roots = {"this": REPO} | ({"base": a.base.resolve()} if a.base else {})
    runs: dict[str, list[dict]] = {k: [] for k in roots}
    for r in range(a.rounds):
        order = list(roots.items()) if r % 2 == 0 else list(reversed(roots.items()))
        for label, root in order:
            runs[label].append(measure(root, a.number))
    print(f"# bundled lists: DomainIndex.match, µs of thread CPU per call (median of {a.rounds})")
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| checkout | profile | rules | unlisted | listed | first-sight subdomain |")
    print("|---|---|---:|---:|---:|---:|")
    med: dict[tuple[str, str], dict[str, float]] = {}
    for label, rows in runs.items():
        for profile in ("default", "strict"):
            m = {k: statistics.median(row[profile][k] for row in rows)
                 for k in ("rules", "unlisted", "listed", "subdomain") if k in rows[0][profile]}
            med[(label, profile)] = m
            print(f"| {label} | {profile} | {m['rules']:,.0f} | {m.get('unlisted', 0):.2f} | "
                  f"{m.get('listed', 0):.2f} | {m.get('subdomain', 0):.2f} |")
    if a.base:
        for profile in ("default", "strict"):
            t, b = med[("this", profile)], med[("base", profile)]
            ratios = ", ".join(f"{k} x{t[k] / b[k]:.2f}" for k in ("unlisted", "listed", "subdomain")
                               if b.get(k))
            print(f"\n{profile}: this / base time per match: {ratios}")
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
