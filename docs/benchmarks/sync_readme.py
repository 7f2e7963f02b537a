"""Copy generated tables into README.md between ``<!-- include: PATH -->`` and ``<!-- end include -->``.

Run after the benchmark commands: ``python docs/benchmarks/sync_readme.py``. The README's numbers
are then exactly the generated files' (a file's title becomes a bold line). ``--check`` changes
nothing and exits with status 1 when the README is out of date.
"""

import re
import sys
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


def main(argv: list[str]) -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    synced = PATTERN.sub(_included, text)
    if "--check" in argv:
        if synced != text:
            print("README.md differs from the generated tables; run python docs/benchmarks/sync_readme.py")
            return 1
        return 0
    readme.write_text(synced)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
