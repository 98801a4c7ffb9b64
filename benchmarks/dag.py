"""How long Snakemake takes to plan a cohort of thousands of patients, against a bare workflow.

Writes a sample sheet of `--patients` patients (empty DICOM folders: planning reads none) and
times `snakemake -n` of the lungcam workflow on it; then writes a bare Snakefile with as many
jobs as that dry run planned (one trivial rule per patient and one that gathers them) and times
its dry run in the same way, in the same run. Target (issue 7): at most 1.5x the bare time.

A third dry run, not part of the target, apportions the gap: a workflow of the same shape as
lungcam's plan (per patient a checkpoint on the DICOM folder and a QC job whose input function
waits on it) with the conventions every lungcam rule follows (`script:`, `log:`, `benchmark:`,
`conda:`, `params:`, `mem_mb` growing with the attempt), and nothing else.

    .venv/bin/python benchmarks/dag.py --patients 5000
"""

from __future__ import annotations

import argparse
import re
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
    input: expand("qc/{{patient}}.json", patient=PATIENTS)

checkpoint ingest:
    input: "{dicom}/{{patient}}"
    output: directory("stage/{{patient}}")
    params: settings={{"min_slices": 16, "series": {{"rank_by": ["most_slices"]}}}}
    log: "logs/ingest/{{patient}}.log"
    benchmark: "logs/benchmarks/ingest/{{patient}}.tsv"
    resources: mem_mb=lambda wildcards, attempt: 2000 * attempt, runtime=10
    conda: "env.yaml"
    script: "step.py"

def qc_inputs(wildcards):
    return {{"ingest": checkpoints.ingest.get(patient=wildcards.patient).output[0]}}

rule patient_qc:
    input: unpack(qc_inputs)
    output: "qc/{{patient}}.json"
    log: "logs/patient_qc/{{patient}}.log"
    benchmark: "logs/benchmarks/patient_qc/{{patient}}.tsv"
    resources: mem_mb=lambda wildcards, attempt: 1000 * attempt, runtime=2
    conda: "env.yaml"
    script: "step.py"
"""


def dry_run(workdir: Path, *args: str) -> tuple[float, int]:
    """(seconds, jobs planned) of `snakemake -n` in `workdir`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--directory", str(workdir), *args],
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    total = re.search(r"^total\s+(\d+)", done.stdout, re.MULTILINE)
    return seconds, int(total.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = ["patient_id\tlabel\tdicom_dir"]
        classes = ("COVID-19", "CAP", "NP")
        for i in range(args.patients):
            (root / "dicom" / f"p{i:05d}").mkdir(parents=True)
            rows.append(f"p{i:05d}\t{classes[i % 3]}\tdicom/p{i:05d}")
        (root / "patients.tsv").write_text("\n".join(rows) + "\n")
        lungcam_seconds, jobs = dry_run(root / "run", "-s", str(REPO / "Snakefile"), "--config", f"samples={root / 'patients.tsv'}")
        bare = root / "bare"
        bare.mkdir()
        (bare / "Snakefile").write_text(BARE.format(jobs=jobs - 2))
        bare_seconds, bare_jobs = dry_run(bare, "-s", str(bare / "Snakefile"))
        shaped = root / "shaped"
        shaped.mkdir()
        (shaped / "Snakefile").write_text(SHAPED.format(patients=args.patients, dicom=root / "dicom"))
        (shaped / "env.yaml").write_text("channels: [conda-forge]\ndependencies: [python]\n")
        (shaped / "step.py").write_text("")
        shaped_seconds, shaped_jobs = dry_run(shaped, "-s", str(shaped / "Snakefile"))
    print(f"{args.patients} patients: lungcam dry run {lungcam_seconds:.1f} s for {jobs} planned jobs; "
          f"bare workflow {bare_seconds:.1f} s for {bare_jobs} jobs; ratio {lungcam_seconds / bare_seconds:.2f} (target <= 1.5)")
    print(f"same shape and rule conventions, nothing else: {shaped_seconds:.1f} s for {shaped_jobs} jobs, "
          f"{shaped_seconds / bare_seconds:.2f}x the bare workflow; lungcam {lungcam_seconds / shaped_seconds:.2f}x it")


if __name__ == "__main__":
    main()
