"""``hushdns lists show`` and ``hushdns lists stats`` on a real config."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from resolver.cli import main


def setup(tmp_path: Path) -> Path:
    (tmp_path / "vendor.txt").write_text(
        "# title: vendor\n"
        "tracking.example.com  # analytics (evidence)\n"
        "0.0.0.0 ads.example.net shared.example.org\n"
        "||pixel.example.com^\n"
        "/^beacon[0-9]+\\./\n"
        "this line is junk\n")
    d = tmp_path / "more"
    d.mkdir()
    (d / "a.txt").write_text("shared.example.org\nads.example.net  # also here\n")
    (d / "b.txt").write_text("only-b.example\n")
    (tmp_path / "allow.txt").write_text("pixel.example.com\n")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"upstreams: [\"127.0.0.1:1\"]\nstate_dir: {tmp_path / 'state'}\n"
                   "blocking:\n  lists:\n    vendor: vendor.txt\n    more: more\n"
                   "    remote: https://lists.invalid/never-fetched.txt\n"
                   "  allow:\n    mine: allow.txt\n")
    return cfg


def test_show_prints_every_entry_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = setup(tmp_path)
    assert main(["lists", "show", "vendor", "-c", str(cfg)]) == 0
    cap = capsys.readouterr()
    f = tmp_path / "vendor.txt"
    assert cap.out.splitlines() == [
        f"{f}:2: tracking.example.com  # analytics (evidence)",
        f"{f}:3: ads.example.net",
        f"{f}:3: shared.example.org",
        f"{f}:4: pixel.example.com",
        f"{f}:5: /^beacon[0-9]+\\./",
    ]
    assert f"{f}:6: rejected" in cap.err
    assert main(["lists", "show", "more", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{tmp_path / 'more' / 'a.txt'}:1: shared.example.org",
                   f"{tmp_path / 'more' / 'a.txt'}:2: ads.example.net  # also here",
                   f"{tmp_path / 'more' / 'b.txt'}:1: only-b.example"]


def test_show_a_url_list_reads_its_disk_copy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = setup(tmp_path)
    url = "https://lists.invalid/never-fetched.txt"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    (tmp_path / "state" / "lists").mkdir(parents=True)
    copy = tmp_path / "state" / "lists" / f"{key}.txt"
    copy.write_text("copied.example\n")
    assert main(["lists", "show", "remote", "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{copy}:1: copied.example"]


def test_show_unknown_list(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = setup(tmp_path)
    assert main(["lists", "show", "nope", "-c", str(cfg)]) == 2
    assert "configured: vendor, more, remote, mine" in capsys.readouterr().err


def test_stats_counts_entries_rejects_and_overlap(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from resolver.lists import remote

    # The URL list has no copy, so stats would download it: make that fail fast, offline.
    monkeypatch.setattr(remote, "_download", lambda url, meta: (_ for _ in ()).throw(
        remote._Failure("offline in tests")))
    cfg = setup(tmp_path)
    assert main(["lists", "stats", "-c", str(cfg)]) == 1     # a list failed to load
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:5]}
    assert rows["vendor"][1:4] == ["block", "4", "1"] and "(+1 regex)" in out
    assert rows["more"][1:4] == ["block", "3", "0"]
    assert rows["mine"][1:4] == ["allow", "1", "0"]
    assert rows["remote"][1:3] == ["block", "FAILED:"] and "offline in tests" in out
    assert "  vendor & more: 2" in out
    assert "  vendor & mine: 1" in out
    assert "more & mine" not in out
