"""Are two runs' outputs the same? Every file under results/ and demo/ of two run folders.

For a change meant to alter no behaviour (a restructuring): run the demo before and after it,
each in its own checkout, and compare. Files are compared byte for byte, except what records
when and from which code a run was made, which differs between any two runs:

- gzip files (NIfTI) by their uncompressed bytes (the gzip header holds a time);
- provenance.json without its `code` and `run` sections (commit, command line, start time);
- HTML reports without those rows and the run-times table (each job's seconds);
- training curves (training/*.tsv) without their timing columns.

Prints one line per file that differs or exists on one side only, then the counts; exits 1 when
anything differs.

    .venv/bin/python benchmarks/compare_runs.py BEFORE_RUN AFTER_RUN
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from pathlib import Path

FOLDERS = ("results", "demo")
TIMING_COLUMNS = ("seconds", "slices_per_second")  # of the training curves
# What records when and from which code: removed from HTML before comparing.
VOLATILE_HTML = (
    re.compile(r"<tr><th>(code version \(git\)|run started|command)</th>.*?</tr>", re.DOTALL),
    re.compile(r"<table>\s*<tr><th>stage \(rule\)</th><th>wall time \(s\)</th>.*?</table>", re.DOTALL),
)


def content(path: Path) -> bytes:
    """The bytes of `path` that say what a run computed."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.name == "provenance.json":
        document = json.loads(data)
        document.pop("code", None)
        document.pop("run", None)
        return json.dumps(document, sort_keys=True).encode()
    if path.suffix == ".tsv" and path.parent.name == "training":
        rows = [line.split("\t") for line in data.decode().splitlines()]
        keep = [i for i, name in enumerate(rows[0]) if name not in TIMING_COLUMNS]
        return "\n".join("\t".join(row[i] for i in keep) for row in rows).encode()
    if path.suffix == ".html":
        text = data.decode()
        for pattern in VOLATILE_HTML:
            text = pattern.sub("", text)
        return text.encode()
    return data


def compare(before: Path, after: Path) -> tuple[list[str], int]:
    """(lines naming each file that differs or exists on one side only, files compared)."""
    lines, compared = [], 0
    for folder in FOLDERS:
        names = {p.relative_to(before) for p in (before / folder).rglob("*") if p.is_file()}
        names |= {p.relative_to(after) for p in (after / folder).rglob("*") if p.is_file()}
        for name in sorted(names):
            old, new = before / name, after / name
            if not old.exists() or not new.exists():
                lines.append(f"only in {'after' if not old.exists() else 'before'}: {name}")
                continue
            compared += 1
            if content(old) != content(new):
                lines.append(f"differs: {name}")
    return lines, compared


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    lines, compared = compare(args.before, args.after)
    print("\n".join(lines))
    print(f"{compared} files compared under {', '.join(FOLDERS)}; {len(lines)} differ or exist on one side only")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
