"""Copy generated tables into README.md and the documentation pages (docs/*.md) between
``<!-- include: PATH -->`` (the whole file) or ``<!-- include-table: PATH -->`` (its title and first table)
and ``<!-- end include -->``.

Run after the benchmark commands: ``python docs/benchmarks/sync_readme.py``. The pages' numbers
are then exactly the generated files' (a file's title becomes a bold line). ``--check`` changes
nothing and exits with status 1 when a page is out of date.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATTERN = re.compile(r"(<!-- include(?P<table>-table)?: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _first_table(lines: list[str]) -> list[str]:
    """The title line and the first Markdown table of ``lines``."""
    start = next(n for n, line in enumerate(lines) if line.startswith("|"))
    end = next((n for n in range(start, len(lines)) if not lines[n].startswith("|")), len(lines))
    return [lines[0], ""] + lines[start:end]


def _included(match: re.Match) -> str:
    source = ROOT / match["path"]
    if not source.exists():
        body = f"(not generated yet: `{match['path']}`)\n"
    else:
        lines = source.read_text().splitlines()
        if match["table"]:
            lines = _first_table(lines)
        body = "\n".join(f"**{line[2:]}**" if line.startswith("# ") else line for line in lines).strip() + "\n"
    return match.group(1) + body + match.group(5)


def main(argv: list[str]) -> int:
    stale = []
    for page in pages():
        text = page.read_text()
        synced = PATTERN.sub(_included, text)
        if synced != text:
            stale.append(page.relative_to(ROOT))
            if "--check" not in argv:
                page.write_text(synced)
    if "--check" in argv and stale:
        pages_out_of_date = ", ".join(map(str, stale))
        print(f"{pages_out_of_date} differ from the generated tables; run python docs/benchmarks/sync_readme.py")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
