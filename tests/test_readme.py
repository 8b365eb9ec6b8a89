"""README.md renders: every code fence is closed where it should be and every table has a header
and a separator row (GitHub renders a block of `|` lines without them as plain text)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
SEPARATOR_CELL = re.compile(r"^\s*:?-+:?\s*$")


def cells(row: str) -> list[str]:
    """The cells of a table row, split at the pipes that are not escaped."""
    return re.split(r"(?<!\\)\|", row.strip().strip("|"))


def is_separator(row: str) -> bool:
    return all(SEPARATOR_CELL.match(cell) for cell in cells(row))


def markdown_problems(text: str) -> list[str]:
    """Unclosed fences and malformed tables, each as 'line N: what'. A fence line with an info
    string (```python) inside a block cannot close it: it means the block above was left open."""
    problems = []
    fence, fence_line = None, 0
    table: list[tuple[int, str]] = []

    def close_table() -> None:
        if not table:
            return
        first, header = table[0]
        if len(table) < 2 or not is_separator(table[1][1]) or is_separator(header):
            problems.append(f"line {first}: a table without a header row and a separator row")
        else:
            width = len(cells(header))
            problems.extend(
                f"line {n}: a table row of {len(cells(row))} cells under a header of {width}"
                for n, row in table[1:]
                if len(cells(row)) != width
            )
        table.clear()

    for number, line in enumerate(text.splitlines(), start=1):
        marker = FENCE.match(line)
        if fence is not None:
            if marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence):
                if not line.strip()[len(marker.group(1)) :].strip():
                    fence = None
                    continue
                problems.append(
                    f"line {number}: a code fence opened inside the block of line "
                    f"{fence_line}, which was never closed"
                )
                fence, fence_line = marker.group(1), number  # read on as the author meant
            continue
        if marker:
            close_table()
            fence, fence_line = marker.group(1), number
        elif line.lstrip().startswith("|"):
            table.append((number, line))
        else:
            close_table()
    close_table()
    if fence is not None:
        problems.append(f"line {fence_line}: a code fence that is never closed")
    return problems


def test_readme_fences_are_closed_and_tables_have_headers():
    assert markdown_problems(README.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    "text, problem",
    [
        ("```python\nx = 1\n\n### Next\n", "line 1: a code fence that is never closed"),
        ("```python\nx = 1\n### Next\n```python\ny\n```\n", "line 4: a code fence opened inside"),
        ("| `x` | 1 |\n| `y` | 2 |\n", "line 1: a table without a header row"),
        ("|---|---|\n| `y` | 2 |\n", "line 1: a table without a header row"),
        ("| a | b |\n|---|---|\n| 1 | 2 | 3 |\n", "line 3: a table row of 3 cells"),
    ],
)
def test_the_check_finds_what_breaks_rendering(text, problem):
    assert any(p.startswith(problem) for p in markdown_problems(text))


def test_the_check_accepts_well_formed_markdown():
    text = "````md\n```\n````\n\n| a | b |\n|:--|--:|\n| `x \\| y` | 2 |\n"
    assert markdown_problems(text) == []
