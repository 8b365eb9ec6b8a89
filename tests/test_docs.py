"""The documentation renders and holds together: every page under docs/ passes the README's
render check (closed fences, tables with a header and a separator row), every relative link of
README.md and docs/ reaches a file and, with an anchor, a heading of that page (as GitHub makes
anchors), every page is in the site's navigation, and the README stays a short front door whose
first two commands are the install-and-test command and the main job."""

import re
from pathlib import Path

import pytest
import yaml

from tests.test_readme import FENCE, markdown_problems

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = sorted(DOCS.rglob("*.md"))
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")


def relative(path: Path) -> str:
    """The path from the repository root (as given, for a file outside it)."""
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def prose_lines(text: str):
    """(line number, line) of every line outside fenced code blocks."""
    fence = None
    for number, line in enumerate(text.splitlines(), start=1):
        marker = FENCE.match(line)
        if fence is not None:
            if marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence):
                fence = None
            continue
        if marker:
            fence = marker.group(1)
            continue
        yield number, line


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text (code spans, emphasis and links reduced to
    their words) lower-cased, without punctuation, each space a hyphen."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = INLINE_CODE.sub(lambda m: m.group(2).strip(), text)
    text = re.sub(r"<[^>]+>", "", text).replace("*", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a page's headings, numbered as GitHub numbers repeats (-1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        slug = github_slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path):
    """(line number, target) of every link and image in a page's prose (not in code)."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            yield number, target


def broken_links(path: Path) -> list[str]:
    """Relative links whose file, or whose anchor in that file, does not exist."""
    problems = []
    for number, target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        where = f"{relative(path)}:{number}: {target}"
        if not destination.exists():
            problems.append(f"{where}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{where}: no heading with anchor #{anchor} in {relative(destination)}")
    return problems


def nav_pages(entries) -> list[str]:
    """Every page named in mkdocs.yml's nav, however deep."""
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages.extend(nav_pages(value) if isinstance(value, list) else [value])
    return pages


def test_there_are_docs_pages():
    assert (DOCS / "index.md") in PAGES and len(PAGES) > 10


@pytest.mark.parametrize("page", PAGES, ids=[relative(p) for p in PAGES])
def test_page_fences_are_closed_and_tables_have_headers(page):
    assert markdown_problems(page.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("page", [README, *PAGES], ids=[relative(p) for p in [README, *PAGES]])
def test_relative_links_and_anchors_resolve(page):
    assert broken_links(page) == []


def test_every_page_is_in_the_site_navigation():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs"
    listed = nav_pages(config["nav"])
    assert sorted(listed) == sorted(p.relative_to(DOCS).as_posix() for p in PAGES)


def test_readme_is_short_and_starts_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", text, flags=re.M | re.S)
    assert blocks[:2] == [
        (
            "bash",
            'pip install torch==2.14.1 ninja && pip install --no-build-isolation -e ".[test]"\n'
            "python -m pytest\n",
        ),
        ("bash", "python -m train.classify\n"),
    ]


@pytest.mark.parametrize(
    "heading, slug",
    [
        ("`selective_scan`", "selective_scan"),
        (
            "selective_scan: cost per step by state size",
            "selective_scan-cost-per-step-by-state-size",
        ),
        ("The video model: HierarchicalVLM", "the-video-model-hierarchicalvlm"),
        (
            "Text: tokenizer, video QA head, caption decoder, BLEU and CIDEr-D",
            "text-tokenizer-video-qa-head-caption-decoder-bleu-and-cider-d",
        ),
        ("[Building](building.md) **options**", "building-options"),
        ("A — B", "a--b"),
    ],
)
def test_slugs_are_githubs(heading, slug):
    assert github_slug(heading) == slug


def test_the_link_check_finds_a_missing_page_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#a-section) [self](#page) [web](https://example.org)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) `[in code](missing.md)`\n\n"
        "```md\n[in a block](missing.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 2
    assert "missing.md: no such file" in problems[0]
    assert "no heading with anchor #nowhere" in problems[1]
