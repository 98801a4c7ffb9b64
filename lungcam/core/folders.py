"""List the files below a folder once each, following symbolic links without looping.

A DICOM export may link folders into each other (a link back to a parent makes a loop) or reach
one file by two paths. Ingest reads, and provenance checksums, exactly the files listed here:
each real folder is entered once and each real file listed once, in sorted order.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path


def iter_files(folder: Path | str, skip_hidden: bool = False) -> Iterator[tuple[Path, bool]]:
    """(path, repeat) for every file below `folder`, sorted per folder; `repeat` is true for a
    path leading to a real file already yielded.

    Symbolic links to folders are followed, but a real folder already entered is not entered
    again (no loops). `skip_hidden` leaves out names starting with a dot. Lazy: a caller that
    needs the first few files stops the walk there.
    """
    entered: set[tuple[int, int]] = set()  # (device, inode) of each real folder and file
    listed: set[tuple[int, int]] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        here = os.stat(root)
        if (here.st_dev, here.st_ino) in entered:
            dirs[:] = []
            continue
        entered.add((here.st_dev, here.st_ino))
        dirs[:] = sorted(d for d in dirs if not (skip_hidden and d.startswith(".")))
        for name in sorted(names):
            if skip_hidden and name.startswith("."):
                continue
            path = os.path.join(root, name)
            try:
                info = os.stat(path)
            except OSError:  # a dangling link
                continue
            if stat.S_ISREG(info.st_mode):
                identity = (info.st_dev, info.st_ino)
                yield Path(path), identity in listed
                listed.add(identity)


def list_files(folder: Path | str, skip_hidden: bool = False) -> tuple[list[Path], int]:
    """(every file below `folder`, each real file once; how many more paths led to a file
    already listed), as `iter_files` walks them."""
    files, repeats = [], 0
    for path, repeat in iter_files(folder, skip_hidden):
        if repeat:
            repeats += 1
        else:
            files.append(path)
    return files, repeats


def file_digest(path: Path | str) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_digest(folder: Path | str) -> str:
    """sha256 over a folder's files in sorted order: each file's path relative to the folder,
    then its bytes. Renaming, adding, removing or changing any file changes it. The files are
    those ingest reads (linked folders followed once, each real file once)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(list_files(folder)[0]):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_digest(path).encode())
    return digest.hexdigest()
