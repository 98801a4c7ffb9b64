"""Write outputs so that a killed job never leaves a partial file behind.

Every output is written under a temporary name beside its final one and renamed onto it once
complete (a rename within one folder is atomic). A job killed mid-write (kill -9, out of memory,
a preempted node) leaves at most a hidden `.partial-` file and no output, so Snakemake sees the
output missing and redoes the job, instead of a later stage reading a truncated mask.
The temporary name ends with the final name, so writers that choose the format by extension
(nibabel, matplotlib, numpy) write the same format.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

PARTIAL_PREFIX = ".partial-"


def partial_path(path: Path | str) -> Path:
    """The temporary name under which `path` is written."""
    path = Path(path)
    return path.with_name(PARTIAL_PREFIX + path.name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path to write `path`'s content to; on success it becomes `path`.

    Works for a file or a folder (the block creates it). A leftover from an earlier killed
    attempt is removed first; on an error the temporary file or folder is removed and the
    error re-raised. A folder replaces an existing folder of that name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    os.replace(tmp, path)


def write_text(path: Path | str, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_tsv(table, path: Path | str, **options) -> None:
    """Write a pandas DataFrame as a tab-separated file without its index, atomically;
    `options` go to `DataFrame.to_csv` (e.g. float_format)."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, **options)
