"""Snakemake's own time in a SLURM run of thousands of patients through `prepare`, simulated.

The workflow runs with profiles/slurm (placeholders filled in) through the SLURM executor
plugin, against fake `sbatch`, `sacct` and `squeue` on PATH: each submitted job completes at
once. Its payload writes the job's outputs as one real patient (P001 of ../shared/data, run
through `prepare` locally first) left them: records with the patient id replaced, every other
file empty. So Snakemake plans the cohort, submits the grouped ingest jobs, re-plans after the
ingest status checkpoint, submits the NIfTI, lungs and cache groups, re-plans after the lung
status checkpoint, and runs the local QC rules, as on a cluster whose jobs take no time.

Snakemake's own time is the CPU time of the Snakemake process itself (sampled from /proc while
it runs), per patient. The local script jobs and
the fake SLURM commands run as its child processes and are counted apart. At each cohort
size it also prints how many SLURM jobs were submitted, and how much of Snakemake's time went to
selecting which ready jobs to start, by the kind of ready jobs (`group`: SLURM group jobs).

    .venv/bin/python benchmarks/slurm_sim.py --patients 1000 5000
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEMPLATE_SCAN = REPO.parent / "shared" / "data" / "covid-ct-md" / "P001"
TEMPLATE_ID = "P001"
TEXT_SUFFIXES = (".json", ".tsv")
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
# The simulated run's Snakemake, with the time of each scheduling round's job selection added up
# by the kind of jobs selected from, written to $SELECTION_TIMES at exit. Timing changes nothing
# Snakemake decides.
TIMED_SNAKEMAKE = [
    sys.executable,
    "-c",
    """
import atexit, collections, json, os, time
import snakemake.scheduling.job_scheduler as scheduler
seconds = collections.Counter()
select = scheduler.JobScheduler.job_selector
def timed(self, jobs):
    jobs = list(jobs)
    start = time.perf_counter()
    try:
        return select(self, jobs)
    finally:
        kinds = {job.rule.name if hasattr(job, "rule") else "group" for job in jobs}
        seconds[" + ".join(sorted(kinds))] += time.perf_counter() - start
scheduler.JobScheduler.job_selector = timed
atexit.register(lambda: open(os.environ["SELECTION_TIMES"], "w").write(json.dumps(seconds)))
from snakemake.cli import main
main()
""",
]

# sbatch: run the payload, then answer with a new job id. The payload writes, for every job in the
# submitted group (`--target-jobs 'rule:patient=ID'`), the template patient's outputs of that rule.
SBATCH = """#!{python}
import fcntl, os, re, sys
from pathlib import Path

state = Path(os.environ["FAKE_SLURM"])
template = Path(os.environ["FAKE_SLURM_TEMPLATE"])
sys.stdin.read()
args = sys.argv[1:]
wrap = next(a for a in args if a.startswith("--wrap="))
workdir = Path(args[args.index("-D") + 1])
outputs = {{}}
for line in (template / "outputs.tsv").read_text().splitlines():
    rule, path = line.split("\\t")
    outputs.setdefault(rule, []).append(path)
for rule, patient in re.findall(r"'(\\w+):patient=([\\w-]+)'", wrap):
    for output in outputs[rule]:
        source = template / "run" / output
        files = [p for p in source.rglob("*") if p.is_file()] if source.is_dir() else [source]
        for file in files:
            target = workdir / str(file.relative_to(template / "run")).replace("{template_id}", patient)
            target.parent.mkdir(parents=True, exist_ok=True)
            if file.suffix in {text_suffixes!r}:
                target.write_text(file.read_text().replace("{template_id}", patient))
            else:
                target.write_bytes(b"")
with open(state / "jobs", "a+") as jobs:
    fcntl.flock(jobs, fcntl.LOCK_EX)
    jobs.seek(0)
    job_id = 1000 + len(jobs.read().split())
    jobs.write(f"{{job_id}}\\n")
print(job_id)
"""
# sacct and squeue: every submitted job has completed.
STATUS = """#!/bin/sh
sed 's/$/|COMPLETED/' "$FAKE_SLURM/jobs" 2>/dev/null
"""
# What the plugin asks the cluster about itself: the fake cluster's answers (also used by
# tests/test_slurm.py).
CLUSTER_INFO = {
    "scontrol": '#!/bin/sh\necho "MinJobAge               = 300 sec"\n',
    "sacctmgr": "#!/bin/sh\necho lab-account\n",
    "sshare": "#!/bin/sh\necho lab-account\n",
    "sinfo": "#!/bin/sh\necho cpu\necho gpu\n",
}


def filled_profile(folder: Path) -> Path:
    """A copy of profiles/slurm with its placeholders filled in, as a user would."""
    folder.mkdir(parents=True)
    settings = (REPO / "profiles" / "slurm" / "config.yaml").read_text()
    for placeholder, value in (("<your-account>", "lab-account"), ("<cpu-partition>", "cpu"), ("<gpu-partition>", "gpu")):
        settings = settings.replace(placeholder, value)
    (folder / "config.yaml").write_text(settings)
    return folder


def template(folder: Path) -> Path:
    """The template patient run through `prepare` locally in `folder`/run, and `outputs.tsv`:
    each per-patient output with the rule that wrote it (`snakemake --summary`)."""
    folder.mkdir()
    (folder / "patients.tsv").write_text(f"patient_id\tlabel\tdicom_dir\n{TEMPLATE_ID}\tCOVID-19\t{TEMPLATE_SCAN}\n")
    common = ["prepare", "--directory", str(folder / "run"), "--config", f"samples={folder / 'patients.tsv'}"]
    subprocess.run([*SNAKEMAKE, *common, "--cores", "2"], cwd=REPO, check=True, capture_output=True)
    summary = subprocess.run([*SNAKEMAKE, *common, "--summary"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    rows = [line.split("\t") for line in summary.splitlines()[1:] if "\t" in line]
    outputs = {(rule, output) for output, _, rule, *_ in rows if TEMPLATE_ID in output}
    # Each job's log and benchmark file: logs/.../<rule>/<patient>.*
    logs = (folder / "run" / "logs").rglob(f"{TEMPLATE_ID}.*")
    outputs |= {(rule, str(p.relative_to(folder / "run"))) for p in logs for rule, _ in outputs if p.parent.name == rule}
    (folder / "outputs.tsv").write_text("".join(f"{rule}\t{output}\n" for rule, output in sorted(outputs)))
    return folder


def fake_slurm(folder: Path) -> Path:
    """The fake SLURM commands in `folder`."""
    folder.mkdir()
    scripts = {
        "sbatch": SBATCH.format(python=sys.executable, template_id=TEMPLATE_ID, text_suffixes=TEXT_SUFFIXES),
        "sacct": STATUS,
        "squeue": STATUS,
        **CLUSTER_INFO,
    }
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod((folder / name).stat().st_mode | stat.S_IEXEC)
    return folder


def cohort(folder: Path, patients: int) -> Path:
    """A sample sheet of `patients` patients with empty DICOM folders (the payload never reads them)."""
    rows = ["patient_id\tlabel\tdicom_dir"]
    for i in range(patients):
        (folder / "dicom" / f"p{i:05d}").mkdir(parents=True)
        rows.append(f"p{i:05d}\t{('COVID-19', 'CAP', 'NP')[i % 3]}\tdicom/p{i:05d}")
    (folder / "patients.tsv").write_text("\n".join(rows) + "\n")
    return folder / "patients.tsv"


def own_cpu_seconds(pid: int) -> tuple[float, float]:
    """(CPU seconds of process `pid` itself, of its waited-for children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks, (int(fields[13]) + int(fields[14])) / ticks


def simulate(root: Path, patients: int, profile: Path, bin_dir: Path, template_dir: Path) -> dict:
    """One simulated run through `prepare`: wall and CPU seconds, SLURM jobs, patients done."""
    state = root / "state"
    state.mkdir(parents=True)
    samples = cohort(root, patients)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SLURM": str(state),
        "FAKE_SLURM_TEMPLATE": str(template_dir),
        "SELECTION_TIMES": str(state / "selection.json"),
    }
    command = [
        *TIMED_SNAKEMAKE,
        "prepare",
        "--directory",
        str(root / "run"),
        "--config",
        f"samples={samples}",
        "--profile",
        str(profile),
        "--cores",
        "2",
        "--latency-wait",
        "5",
        "--slurm-init-seconds-before-status-checks",
        "1",
    ]
    start = time.perf_counter()
    with open(root / "snakemake.log", "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        own = children = 0.0
        while process.poll() is None:
            try:
                own, children = own_cpu_seconds(process.pid)
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.2)
    wall = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"the simulated run of {patients} patients failed; see {root / 'snakemake.log'}")
    done = len((root / "run" / "results" / "cohort_qc.tsv").read_text().splitlines()) - 1
    return {
        "wall": wall,
        "own": own,
        "children": children,
        "jobs": len((state / "jobs").read_text().split()),
        "done": done,
        "selection": json.loads((state / "selection.json").read_text()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, nargs="+", default=[1000, 5000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        profile = filled_profile(root / "profile")
        template_dir = template(root / "template")
        bin_dir = fake_slurm(root / "bin")
        per_patient = {}
        for patients in args.patients:
            result = simulate(root / f"cohort{patients}", patients, profile, bin_dir, template_dir)
            if result["done"] != patients:
                raise SystemExit(f"{patients} patients: only {result['done']} reached the cohort QC table")
            per_patient[patients] = result["own"] / patients
            print(
                f"{patients} patients through prepare: {result['wall']:.0f} s wall, {result['jobs']} SLURM jobs; "
                f"Snakemake's own CPU {result['own']:.1f} s ({1000 * per_patient[patients]:.1f} ms per patient); "
                f"its child processes (local jobs, fake SLURM commands) {result['children']:.1f} s CPU"
            )
            selection = ", ".join(f"{kind} {seconds:.1f} s" for kind, seconds in sorted(result["selection"].items()))
            print(f"  seconds Snakemake spent selecting which ready jobs to start, by kind: {selection}")
        if len(per_patient) > 1:
            small, large = min(per_patient), max(per_patient)
            print(f"own CPU per patient, {large} against {small} patients: {per_patient[large] / per_patient[small]:.2f}x")


if __name__ == "__main__":
    main()
