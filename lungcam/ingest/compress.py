"""Gzip the converted volume quickly.

dcm2niix spends most of its run compressing with zlib-ng; ISA-L's gzip (python-isal) is several
times faster for a slightly larger file (benchmarks/ingest.py), so the workflow lets dcm2niix
write an uncompressed NIfTI, checks it memory-mapped, and compresses it here. The output is a standard single-member gzip file.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from isal import igzip

from lungcam.core.atomic import atomic_path

COMPRESS_LEVEL = 2  # ISA-L levels are 0..3; 2 is within 1% of the best ratio at full speed
BUFFER_BYTES = 8 * 1024 * 1024


def gzip_file(source: Path | str, target: Path | str, level: int = COMPRESS_LEVEL) -> None:
    """Write `source` gzip-compressed to `target` (atomically, via a temporary name).

    The gzip header carries no file name and a zero modification time, so compressing the same
    volume twice gives the same bytes: reruns and resumed runs compare byte for byte.
    """
    with atomic_path(target) as tmp, open(source, "rb") as src, open(tmp, "wb") as raw:
        with igzip.IGzipFile(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0) as dst:
            shutil.copyfileobj(src, dst, BUFFER_BYTES)
