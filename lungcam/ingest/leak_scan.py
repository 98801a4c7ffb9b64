"""Scan an output folder for values that must never appear in it (names, birth dates, paths).

Text, JSON, TSV, HTML and images are searched as bytes, case-insensitively. NIfTI files are
searched in their header and extensions only: voxel values are numbers, and 4 bytes of image data
matching a short name by chance is not a leak. Images embedded in HTML as base64 data URIs are
decoded and searched as the image files are: base64 text spells short names by chance.
"""

from __future__ import annotations

import base64
import gzip
import re
from pathlib import Path

import nibabel as nib

DATA_URI = re.compile(rb"data:[\w/+.-]+;base64,([A-Za-z0-9+/=]+)")


def searchable_bytes(path: Path) -> bytes:
    """The bytes of `path` where identifying text could hide."""
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        img = nib.load(path)
        extensions = b"".join(
            ext.get_content() if isinstance(ext.get_content(), bytes) else str(ext.get_content()).encode() for ext in img.header.extensions
        )
        return img.header.binaryblock + extensions
    data = path.read_bytes()
    if name.endswith((".html", ".htm")):
        return DATA_URI.sub(lambda match: base64.b64decode(match.group(1)), data)
    return gzip.decompress(data) if name.endswith(".gz") else data


def find_leaks(folder: Path | str, values: list[str]) -> list[tuple[str, str]]:
    """(relative path, value) for every forbidden value found below `folder`."""
    needles = [(v, v.lower().encode()) for v in values if v]
    leaks = []
    for path in sorted(Path(folder).rglob("*")):
        if not path.is_file():
            continue
        haystack = searchable_bytes(path).lower()
        leaks += [(str(path.relative_to(folder)), value) for value, needle in needles if needle in haystack]
    return leaks
