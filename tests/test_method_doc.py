"""docs/method.md is the repository's account of the method and docs/results.md (with benchmarks/results.md) the home
of every measurement: every citation of them names a section that exists, and nothing cites the old out-of-repo
method notes."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "method.md"
CITATION = re.compile(r"method\.md#([A-Za-z0-9_-]+)")
RESULTS_CITATION = re.compile(r"([\w./]*)results\.md#([A-Za-z0-9_-]+)")
SEARCHED = ("ism", "tests", "docs", "benchmarks", "ablations", "studies")


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def anchors(md: str) -> set[str]:
    """The anchors of every heading of a Markdown text (outside code fences)."""
    out, fenced = set(), False
    for line in md.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6} (.+)", line)):
            out.add(slug(m.group(1)))
    return out


def cited_files() -> list[Path]:
    """Every text file that may cite the method page: code, tests, docs, specs, README."""
    files = [ROOT / "README.md"]
    for d in SEARCHED:
        files += [p for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".yml") and p.is_file()]
    return files


def test_slug_matches_github_anchors():
    """The oracle for the anchor rule: GitHub's documented behaviour on a few hand-written headings."""
    assert slug("Multi-level wavelet loss") == "multi-level-wavelet-loss"
    assert slug("Twin EMA") == "twin-ema"
    assert slug("What ism is (and isn't)") == "what-ism-is-and-isnt"


def test_every_method_citation_names_an_existing_section():
    known = anchors(METHOD.read_text())
    cites = [(p.relative_to(ROOT), a) for p in cited_files() for a in CITATION.findall(p.read_text())]
    assert len(cites) >= 10, "the code cites docs/method.md for each component; the citations went missing"
    missing = [f"{p}: #{a}" for p, a in cites if a not in known]
    assert not missing, f"citations of sections docs/method.md lacks (it has {sorted(known)}): {missing}"


def test_every_results_citation_names_an_existing_section():
    """Links into docs/results.md or benchmarks/results.md (from code, docs or README) land on a real heading."""
    homes = {d: anchors((ROOT / d / "results.md").read_text()) for d in ("docs", "benchmarks")}
    cites = []
    for p in cited_files() + [ROOT / "benchmarks" / "results.md", ROOT / "docs" / "results.md"]:
        for prefix, anchor in RESULTS_CITATION.findall(p.read_text()):
            home = "benchmarks" if "benchmarks/" in prefix or (prefix == "" and p.parent.name == "benchmarks") \
                else "docs"
            cites.append((p.relative_to(ROOT), home, anchor))
    assert len(cites) >= 5
    missing = [f"{p}: {home}/results.md#{a}" for p, home, a in cites if a not in homes[home]]
    assert not missing, f"links to sections that do not exist: {missing}"


def test_method_doc_covers_every_component():
    known = anchors(METHOD.read_text())
    for section in ("conventions", "shortcut-models", "intrinsic-guidance", "interval-guidance",
                    "multi-level-wavelet-loss", "scaling-optimal-transport", "twin-ema", "open-choices"):
        assert section in known


def test_nothing_cites_the_out_of_repo_notes():
    """The shared method notes are not in the repository; citations go to docs/method.md instead."""
    me = Path(__file__).resolve()
    stale = [str(p.relative_to(ROOT)) for p in cited_files() if p.resolve() != me
             and re.search(r"method notes|ism-method\.md", p.read_text(), re.IGNORECASE)]
    assert not stale, f"cite docs/method.md#<section> instead of the method notes in: {stale}"


def test_every_open_choice_key_exists_in_the_schema():
    """The open-choices table names config keys; each must be a real key (or a section.* family)."""
    import dataclasses

    from ism.conf.config import Config
    cfg = Config()
    sections = {f.name: {g.name for g in dataclasses.fields(getattr(cfg, f.name))} for f in dataclasses.fields(cfg)}
    text = METHOD.read_text().split("## Open choices", 1)[1]
    keys = set(re.findall(r"`([a-z_]+)\.([a-z_*]+)`", text))
    assert len(keys) >= 10
    for sec, key in keys:
        assert sec in sections, f"docs/method.md names an unknown config section {sec!r}"
        assert key == "*" or key in sections[sec], f"docs/method.md names an unknown config key {sec}.{key}"
