"""Ingest overhead: lungcam's ingest stage vs bare dcm2niix on the same real DICOM folder.

For each real case in ../shared/data, times (median of --repeats runs, alternating the two so
that caching favours neither) `dcm2niix -z y -b y -ba y -i y` alone, and `ingest_patient`, which
reads every header, chooses the series, runs dcm2niix on it, verifies HU, de-identifies and
compresses. Prints the ratio ingest / dcm2niix; target: at most 1.5.

    .venv/bin/python benchmarks/ingest.py [--repeats 3] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lungcam.core.config import load_config
from lungcam.ingest import dcm2niix
from lungcam.ingest.stage import IngestSettings, ingest_patient

CASES = {
    "P001": "covid-ct-md/P001",
    "cap001": "covid-ct-md/cap001",
    "normal001": "covid-ct-md/normal001",
    "GE (tilted)": "dcm-qa-ct/GE",
    "TotalSegmentator": "totalsegmentator-example/ct_dicom",
    "lungmask (2 slices)": "lungmask-testdata",
}
TARGET = 1.5


def time_bare(folder: Path) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [dcm2niix.executable(), "-z", "y", "-b", "y", "-ba", "y", "-i", "y", "-f", "%s", "-o", out, str(folder)],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - start


def time_ingest(folder: Path, settings: IngestSettings) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        ingest_patient("bench", folder, Path(out) / "stage", settings)
        return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = parser.parse_args()
    settings = IngestSettings.from_config(load_config()["ingest"])
    print(f"dcm2niix {dcm2niix.version()}; median of {args.repeats} runs each\n")
    print(f"{'case':22s} {'dcm2niix s':>10s} {'ingest s':>9s} {'ratio':>6s}")
    worst = 0.0
    for name, relative in CASES.items():
        folder = args.data / relative
        bare, ours = [], []
        for _ in range(args.repeats):
            bare.append(time_bare(folder))
            ours.append(time_ingest(folder, settings))
        ratio = statistics.median(ours) / statistics.median(bare)
        worst = max(worst, ratio)
        print(f"{name:22s} {statistics.median(bare):10.2f} {statistics.median(ours):9.2f} {ratio:6.2f}")
    print(f"\nworst ratio {worst:.2f} (target <= {TARGET}): {'met' if worst <= TARGET else 'NOT met'}")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
