"""How long Snakemake takes to plan a cohort of thousands of patients, against a bare workflow.

Writes a sample sheet of `--patients` patients (empty DICOM folders: planning reads none) and
times `snakemake -n` of the lungcam workflow on it; then writes a bare Snakefile with as many
jobs as that dry run planned (one trivial rule per patient and one that gathers them) and times
its dry run in the same way, in the same run. Target (issue 7): at most 1.5x the bare time.

A third dry run, not part of the target, apportions the gap: a workflow of the same shape as
lungcam's plan (per patient an ingest job on the DICOM folder; one checkpoint gathering their
statuses; the per-patient QC jobs requested by a cohort job whose input function waits on it)
with the conventions every lungcam rule follows (`script:`, `log:`, `benchmark:`, `conda:`,
`params:`, `mem_mb` growing with the attempt), and nothing else. With `--ablate` it
is also timed with each of those conventions taken out in turn, and with all of them out, to
show what each costs. `--repeats N` times every dry run N times and reports the median.

    .venv/bin/python benchmarks/dag.py --patients 5000
    .venv/bin/python benchmarks/dag.py --patients 5000 --ablate --repeats 3
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

REPO = Path(__file__).resolve().parents[1]

BARE = """
rule all:
    input: "gathered.txt"

rule gather:
    input: expand("out/{{i}}.txt", i=range({jobs}))
    output: "gathered.txt"
    shell: "cat {{input}} > {{output}}"

rule one:
    output: "out/{{i}}.txt"
    shell: "echo {{wildcards.i}} > {{output}}"
"""

SHAPED = """
PATIENTS = [f"p{{i:05d}}" for i in range({patients})]

rule all:
    input: "cohort_qc.tsv"

rule ingest:
    input: "{dicom}/{{patient}}"
    output: directory("stage/{{patient}}")
    params: settings={{"min_slices": 16, "series": {{"rank_by": ["most_slices"]}}}}
    log: "logs/ingest/{{patient}}.log"
    benchmark: "logs/benchmarks/ingest/{{patient}}.tsv"
    resources: mem_mb=lambda wildcards, attempt: 2000 * attempt, runtime=10
    conda: "env.yaml"
    script: "step.py"

checkpoint ingest_status:
    input: expand("stage/{{patient}}", patient=PATIENTS)
    output: "status/ingest.tsv"
    log: "logs/ingest_status.log"
    benchmark: "logs/benchmarks/ingest_status.tsv"
    conda: "env.yaml"
    script: "step.py"

def qc_files(wildcards):
    checkpoints.ingest_status.get()
    return expand("qc/{{patient}}.json", patient=PATIENTS)

rule prepare:
    input: qc_files
    output: "cohort_qc.tsv"
    log: "logs/prepare.log"
    benchmark: "logs/benchmarks/prepare.tsv"
    conda: "env.yaml"
    script: "step.py"

rule patient_qc:
    input: "stage/{{patient}}"
    output: "qc/{{patient}}.json"
    log: "logs/patient_qc/{{patient}}.log"
    benchmark: "logs/benchmarks/patient_qc/{{patient}}.tsv"
    resources: mem_mb=lambda wildcards, attempt: 1000 * attempt, runtime=2
    conda: "env.yaml"
    script: "step.py"
"""


CONVENTIONS = ("script", "log", "benchmark", "conda", "params", "resources")


def without(snakefile: str, convention: str) -> str:
    """The shaped Snakefile with one of its conventions taken out: `script:` becomes `shell:`,
    other directives are dropped."""
    if convention == "script":
        return snakefile.replace('script: "step.py"', 'shell: "true"')
    return "\n".join(line for line in snakefile.splitlines() if not line.lstrip().startswith(f"{convention}:"))


def dry_run(workdir: Path, *args: str, repeats: int = 1) -> tuple[float, int]:
    """(median seconds over `repeats`, jobs planned) of `snakemake -n` in `workdir`."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--directory", str(workdir), *args],
                              capture_output=True, text=True, check=True)
        seconds.append(time.perf_counter() - start)
    total = re.search(r"^total\s+(\d+)", done.stdout, re.MULTILINE)
    return statistics.median(seconds), int(total.group(1))


def shaped_run(folder: Path, snakefile: str, repeats: int) -> tuple[float, int]:
    """Dry run of a shaped Snakefile in its own `folder` (with the env file and empty script it names)."""
    folder.mkdir()
    (folder / "Snakefile").write_text(snakefile)
    (folder / "env.yaml").write_text("channels: [conda-forge]\ndependencies: [python]\n")
    (folder / "step.py").write_text("")
    return dry_run(folder, "-s", str(folder / "Snakefile"), repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=1, help="dry runs per workflow; the median is reported")
    parser.add_argument("--ablate", action="store_true", help="also time the shaped workflow without each convention")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = ["patient_id\tlabel\tdicom_dir"]
        classes = ("COVID-19", "CAP", "NP")
        for i in range(args.patients):
            (root / "dicom" / f"p{i:05d}").mkdir(parents=True)
            rows.append(f"p{i:05d}\t{classes[i % 3]}\tdicom/p{i:05d}")
        (root / "patients.tsv").write_text("\n".join(rows) + "\n")
        lungcam_seconds, jobs = dry_run(root / "run", "-s", str(REPO / "Snakefile"), "--config", f"samples={root / 'patients.tsv'}", repeats=args.repeats)
        bare = root / "bare"
        bare.mkdir()
        (bare / "Snakefile").write_text(BARE.format(jobs=jobs - 2))
        bare_seconds, bare_jobs = dry_run(bare, "-s", str(bare / "Snakefile"), repeats=args.repeats)
        shaped = SHAPED.format(patients=args.patients, dicom=root / "dicom")
        shaped_seconds, shaped_jobs = shaped_run(root / "shaped", shaped, args.repeats)
        print(f"{args.patients} patients: lungcam dry run {lungcam_seconds:.1f} s for {jobs} planned jobs; "
              f"bare workflow {bare_seconds:.1f} s for {bare_jobs} jobs; ratio {lungcam_seconds / bare_seconds:.2f} (target <= 1.5)")
        print(f"same shape and rule conventions, nothing else: {shaped_seconds:.1f} s for {shaped_jobs} jobs, "
              f"{shaped_seconds / bare_seconds:.2f}x the bare workflow; lungcam {lungcam_seconds / shaped_seconds:.2f}x it")
        if args.ablate:
            stripped = shaped
            for convention in CONVENTIONS:
                seconds, _ = shaped_run(root / f"without-{convention}", without(shaped, convention), args.repeats)
                stripped = without(stripped, convention)
                print(f"  shaped without {convention:10s}: {seconds:5.1f} s, {seconds / bare_seconds:.2f}x the bare workflow")
            seconds, _ = shaped_run(root / "without-all", stripped, args.repeats)
            print(f"  shaped without all of them: {seconds:5.1f} s, {seconds / bare_seconds:.2f}x the bare workflow")


if __name__ == "__main__":
    main()
