"""What a checkpoint per patient costs a real run, against one status checkpoint for the cohort.

lungcam decides which patients go on after ingest and after lung QC. With a checkpoint per
patient, Snakemake re-plans the DAG after every one of them, so the scheduling time grows with
the square of the cohort. The workflow therefore gathers each stage's statuses into one table
behind one checkpoint (`ingest_status`, `lungs_status`). This script runs three tiny workflows
of that shape (per patient a stage job and a QC job; the jobs only create files) to completion
with `--cores 2`, for each cohort size, and prints their wall times:

- `per patient`: the stage is a checkpoint, and each QC job's input function waits on it;
- `cohort`: the stage is a plain rule, one checkpoint gathers the statuses, and the QC jobs are
  requested by an input function that waits on it (lungcam's design);
- `none`: no checkpoint at all (the QC job names the stage output), the lower bound.

    .venv/bin/python benchmarks/checkpoints.py --patients 250 500 1000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = """
PATIENTS = [f"p{{i:05d}}" for i in range({patients})]
"""

# A stage job and a QC job per patient; STAGE_KIND is `checkpoint` or `rule`, QC_INPUT what the QC job reads.
PER_PATIENT_SHAPE = (
    HEADER
    + """
rule all:
    input: expand("qc/{{patient}}.json", patient=PATIENTS)

STAGE_KIND stage:
    output: directory("stage/{{patient}}")
    shell: "mkdir -p {{output}}"

def qc_inputs(wildcards):
    return [checkpoints.stage.get(patient=wildcards.patient).output[0]]

rule qc:
    input: QC_INPUT
    output: "qc/{{patient}}.json"
    shell: "touch {{output}}"
"""
)
PER_PATIENT = PER_PATIENT_SHAPE.replace("STAGE_KIND", "checkpoint").replace("QC_INPUT", "qc_inputs")
NONE = PER_PATIENT_SHAPE.replace("STAGE_KIND", "rule").replace("QC_INPUT", '"stage/{{patient}}"')

COHORT = (
    HEADER
    + """
rule all:
    input: "cohort_qc.tsv"

rule stage:
    output: directory("stage/{{patient}}")
    shell: "mkdir -p {{output}}"

checkpoint stage_status:
    input: expand("stage/{{patient}}", patient=PATIENTS)
    output: "stage_status.tsv"
    shell: "ls stage > {{output}}"

def passed():
    return set(open(checkpoints.stage_status.get().output[0]).read().split())

def qc_files(wildcards):
    passed()
    return expand("qc/{{patient}}.json", patient=PATIENTS)

rule cohort_qc:
    input: qc_files
    output: "cohort_qc.tsv"
    shell: "touch {{output}}"

rule qc:
    input: "stage/{{patient}}"
    output: "qc/{{patient}}.json"
    shell: "touch {{output}}"
"""
)

DESIGNS = {"per patient": PER_PATIENT, "cohort": COHORT, "none": NONE}


def run_seconds(folder: Path, design: str, patients: int) -> float:
    """Wall time of running one design for `patients` patients to completion in `folder`, two cores."""
    folder.mkdir()
    (folder / "Snakefile").write_text(DESIGNS[design].format(patients=patients))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--quiet", "--directory", str(folder), "-s", str(folder / "Snakefile")],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    if len(list((folder / "qc").iterdir())) != patients:
        raise RuntimeError(f"{design}: not every patient's QC file was made")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, nargs="+", default=[250, 500])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for patients in args.patients:
            seconds = {design: run_seconds(Path(tmp) / f"{design.replace(' ', '-')}-{patients}", design, patients) for design in DESIGNS}
            print(
                f"{patients} patients: "
                + ", ".join(f"{design} {s:.1f} s" for design, s in seconds.items())
                + f"; a checkpoint per patient takes {seconds['per patient'] / seconds['cohort']:.1f}x the cohort checkpoint's time"
            )


if __name__ == "__main__":
    main()
