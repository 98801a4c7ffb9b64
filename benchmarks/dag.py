"""How long Snakemake takes to plan a cohort of thousands of patients, with and without the
SLURM profile, and how that grows with the cohort.

For each cohort size it writes a sample sheet (empty DICOM folders: planning reads none) and
times `snakemake -n` of the workflow on it twice: as is, and with `--workflow-profile` set to
profiles/slurm with its placeholders filled in (what users run on a cluster). It prints each
time, the profile's cost (with / without) and the growth ratios t(10k)/t(2.5k) and t(20k)/t(5k).
Targets (issue 31): with the profile both ratios <= 4.5, and at 10,000 patients the dry run with
the profile within 1.3x the one without. `--repeats N` runs N rounds, each round every dry run
once in turn, and reports medians.

    .venv/bin/python benchmarks/dag.py
    .venv/bin/python benchmarks/dag.py --patients 2500 5000 10000 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from slurm_sim import cohort, filled_profile

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def dry_run(samples: Path, workdir: Path, *args: str) -> tuple[float, int]:
    """(seconds, jobs planned) of one `snakemake -n` of the workflow on `samples`."""
    start = time.perf_counter()
    done = subprocess.run(
        [*SNAKEMAKE, "-n", "--cores", "1", "--directory", str(workdir), "--config", f"samples={samples}", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    return seconds, int(re.search(r"^total\s+(\d+)", done.stdout, re.MULTILINE).group(1))


def growth(times: dict[int, float], large: int, small: int) -> str:
    return f"{times[large] / times[small]:.2f}" if large in times and small in times else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, nargs="+", default=[2500, 5000, 10000, 20000])
    parser.add_argument("--repeats", type=int, default=1, help="rounds of dry runs (every dry run once per round); medians are reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        profile = filled_profile(root / "profile")
        sheets = {n: cohort(root / f"cohort{n}", n) for n in args.patients}
        variants = {"without": (), "with": ("--workflow-profile", str(profile))}
        dry_run(sheets[min(sheets)], root / "warmup")  # the first run compiles and caches
        seconds: dict[tuple[int, str], list[float]] = {}
        jobs: dict[tuple[int, str], int] = {}
        for _ in range(args.repeats):
            for n, samples in sheets.items():
                for name, extra in variants.items():
                    elapsed, jobs[n, name] = dry_run(samples, root / f"run{n}", *extra)
                    seconds.setdefault((n, name), []).append(elapsed)
        median = {key: statistics.median(values) for key, values in seconds.items()}
        print(f"dry run, median of {args.repeats}: patients, planned jobs, seconds without and with profiles/slurm, with / without")
        for n in args.patients:
            if jobs[n, "without"] != jobs[n, "with"]:
                raise SystemExit(f"{n} patients: the profile changed the plan ({jobs[n, 'without']} against {jobs[n, 'with']} jobs)")
            without, with_profile = median[n, "without"], median[n, "with"]
            print(f"{n:6d} {jobs[n, 'with']:6d} {without:7.1f} {with_profile:7.1f}   {with_profile / without:.2f}")
        for name in variants:
            times = {n: median[n, name] for n in args.patients}
            print(
                f"growth {name} the profile: t(10k)/t(2.5k) {growth(times, 10000, 2500)}, t(20k)/t(5k) {growth(times, 20000, 5000)} "
                "(targets with it: <= 4.5)"
            )


if __name__ == "__main__":
    main()
