"""Copy generated tables into README.md between ``<!-- include: PATH -->`` and ``<!-- end include -->``.

Run after the benchmark commands: ``python docs/benchmarks/sync_readme.py``. The README's numbers
are then exactly the generated files' (a file's title becomes a bold line).
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PATTERN = re.compile(r"(<!-- include: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.S)


def _included(match: re.Match) -> str:
    source = ROOT / match["path"]
    if not source.exists():
        body = f"(not generated yet: `{match['path']}`)\n"
    else:
        lines = source.read_text().splitlines()
        body = "\n".join(f"**{line[2:]}**" if line.startswith("# ") else line for line in lines).strip() + "\n"
    return match.group(1) + body + match.group(4)


def main() -> None:
    readme = ROOT / "README.md"
    readme.write_text(PATTERN.sub(_included, readme.read_text()))


if __name__ == "__main__":
    main()
