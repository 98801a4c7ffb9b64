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
show what each costs. With `--parse-once`, every dry run is also timed with one change to
Snakemake, made in the benchmark's own process and in no release: smart_open's `parse_uri` (which
builds a new namedtuple class per call, and which Snakemake's source cache calls three times per
`script:` job) remembers its answers. That sizes the part of the gap an upstream fix would close.
`--repeats N` runs N rounds, each round every workflow once in turn (so
that a machine whose speed drifts weighs on all alike), and reports the medians and the
lungcam/bare ratio of each round.

    .venv/bin/python benchmarks/dag.py --patients 5000
    .venv/bin/python benchmarks/dag.py --patients 5000 --ablate --repeats 3
    .venv/bin/python benchmarks/dag.py --patients 5000 --parse-once --repeats 3
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

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# Snakemake with smart_open's URI parse memoised (`--parse-once`): the parse is a pure function
# of the path, so remembering it changes what Snakemake spends per job and nothing it decides.
PARSE_ONCE = [
    sys.executable,
    "-c",
    """
import functools
import smart_open, smart_open.smart_open_lib, snakemake.sourcecache
parse_uri = functools.lru_cache(maxsize=None)(smart_open.smart_open_lib.parse_uri)
smart_open.parse_uri = smart_open.smart_open_lib.parse_uri = snakemake.sourcecache.parse_uri = parse_uri
from snakemake.cli import main
main()
""",
]


def without(snakefile: str, convention: str) -> str:
    """The shaped Snakefile with one of its conventions taken out: `script:` becomes `shell:`,
    other directives are dropped."""
    if convention == "script":
        return snakefile.replace('script: "step.py"', 'shell: "true"')
    return "\n".join(line for line in snakefile.splitlines() if not line.lstrip().startswith(f"{convention}:"))


def dry_run(workdir: Path, *args: str, snakemake: list[str] = SNAKEMAKE) -> tuple[float, int]:
    """(seconds, jobs planned) of one `snakemake -n` in `workdir`, run by the `snakemake` command."""
    start = time.perf_counter()
    done = subprocess.run(
        [*snakemake, "-n", "--cores", "1", "--directory", str(workdir), *args], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - start
    return seconds, int(re.search(r"^total\s+(\d+)", done.stdout, re.MULTILINE).group(1))


def shaped_folder(folder: Path, snakefile: str) -> tuple[Path, str, str]:
    """A shaped Snakefile in its own `folder` (with the env file and empty script it names); the
    dry-run arguments for it."""
    folder.mkdir()
    (folder / "Snakefile").write_text(snakefile)
    (folder / "env.yaml").write_text("channels: [conda-forge]\ndependencies: [python]\n")
    (folder / "step.py").write_text("")
    return folder, "-s", str(folder / "Snakefile")


def timed_rounds(workflows: dict[str, tuple], repeats: int, parse_once: bool = False) -> tuple[dict[str, list[float]], dict[str, int]]:
    """(seconds of each workflow's dry runs, jobs each planned), `repeats` rounds, each round
    running every workflow once in turn: a machine that slows down or speeds up during the
    benchmark then weighs on every workflow alike, and each round gives a paired ratio. With
    `parse_once`, each workflow is also timed under the name `<name> parsed once`."""
    runs = {name: (workflow, SNAKEMAKE) for name, workflow in workflows.items()}
    if parse_once:
        runs |= {f"{name} parsed once": (workflow, PARSE_ONCE) for name, workflow in workflows.items()}
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    jobs: dict[str, int] = {}
    for _ in range(repeats):
        for name, ((workdir, *args), snakemake) in runs.items():
            elapsed, jobs[name] = dry_run(workdir, *args, snakemake=snakemake)
            seconds[name].append(elapsed)
    return seconds, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of dry runs (every workflow once per round); medians are reported")
    parser.add_argument("--ablate", action="store_true", help="also time the shaped workflow without each convention")
    parser.add_argument(
        "--parse-once", action="store_true", help="also time every dry run with smart_open's URI parse memoised (an upstream fix)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = ["patient_id\tlabel\tdicom_dir"]
        classes = ("COVID-19", "CAP", "NP")
        for i in range(args.patients):
            (root / "dicom" / f"p{i:05d}").mkdir(parents=True)
            rows.append(f"p{i:05d}\t{classes[i % 3]}\tdicom/p{i:05d}")
        (root / "patients.tsv").write_text("\n".join(rows) + "\n")
        lungcam = (root / "run", "-s", str(REPO / "Snakefile"), "--config", f"samples={root / 'patients.tsv'}")
        _, jobs = dry_run(*lungcam)  # also the warm-up: the first run compiles and caches
        bare = root / "bare"
        bare.mkdir()
        (bare / "Snakefile").write_text(BARE.format(jobs=jobs - 2))
        shaped = SHAPED.format(patients=args.patients, dicom=root / "dicom")
        workflows = {"lungcam": lungcam, "bare": (bare, "-s", str(bare / "Snakefile")), "shaped": shaped_folder(root / "shaped", shaped)}
        if args.ablate:
            stripped = shaped
            for convention in CONVENTIONS:
                workflows[f"without {convention}"] = shaped_folder(root / f"without-{convention}", without(shaped, convention))
                stripped = without(stripped, convention)
            workflows["without all of them"] = shaped_folder(root / "without-all", stripped)
        seconds, planned = timed_rounds(workflows, args.repeats, args.parse_once)
        median = {name: statistics.median(values) for name, values in seconds.items()}
        paired = [a / b for a, b in zip(seconds["lungcam"], seconds["bare"])]
        print(
            f"{args.patients} patients: lungcam dry run {median['lungcam']:.1f} s for {jobs} planned jobs; "
            f"bare workflow {median['bare']:.1f} s for {planned['bare']} jobs; ratio {median['lungcam'] / median['bare']:.2f} (target "
            "<= 1.5)"
        )
        if args.repeats > 1:
            print(
                f"  ratio per round: median {statistics.median(paired):.2f}, {min(paired):.2f}-{max(paired):.2f} over {len(paired)} rounds"
            )
        print(
            f"same shape and rule conventions, nothing else: {median['shaped']:.1f} s for {planned['shaped']} jobs, "
            f"{median['shaped'] / median['bare']:.2f}x the bare workflow; lungcam {median['lungcam'] / median['shaped']:.2f}x it"
        )
        for name in workflows:
            if name.startswith("without"):
                label = f"shaped {name}"
                print(f"  {label:26s}: {median[name]:5.1f} s, {median[name] / median['bare']:.2f}x the bare workflow")
        if args.parse_once:
            changed = [name for name in workflows if planned[f"{name} parsed once"] != planned[name]]
            if changed:
                raise SystemExit(f"the memoised parse changed the plan of {', '.join(changed)}")
            bare = median["bare parsed once"]
            print(
                f"with smart_open's URI parse memoised (not in any Snakemake release): bare workflow {bare:.1f} s; "
                f"lungcam {median['lungcam parsed once']:.1f} s, {median['lungcam parsed once'] / bare:.2f}x; "
                f"shaped {median['shaped parsed once']:.1f} s, {median['shaped parsed once'] / bare:.2f}x"
            )


if __name__ == "__main__":
    main()
