"""Snakemake's own time in a SLURM run of thousands of patients through `prepare`, simulated.

The workflow runs with profiles/slurm (placeholders filled in) through the SLURM executor
plugin, against fake `sbatch`, `sacct` and `squeue` on PATH: each submitted job completes at
once. Its payload writes the job's outputs as one real patient (P001 of ../shared/data, run
through `prepare` locally first) left them: records with the patient id replaced, every other
file empty. So Snakemake plans the cohort, submits the grouped ingest jobs, re-plans after the
ingest status checkpoint, submits the NIfTI, lungs and cache groups, re-plans after the lung
status checkpoint, and runs the local QC rules, as on a cluster whose jobs take no time.

Snakemake's own time is the CPU time of the Snakemake process itself (sampled from /proc while
it runs), per patient. The local script jobs and the fake SLURM commands run as its child
processes and are counted apart. At each cohort
size it also prints how many SLURM jobs were submitted, and splits Snakemake's time by phase:
planning, re-planning after each status checkpoint, finishing jobs (output checks, metadata),
selecting which ready jobs to start, submitting (SLURM) and starting (local) jobs, and the rest.
A phase whose time per patient grows with the cohort is not linear in patients.

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
# The simulated run's Snakemake, with the CPU time of its main thread (where Snakemake plans,
# selects, submits and finishes jobs) added up by phase, written to $PHASE_TIMES at exit. A call
# nested in another phase counts to that phase, except re-planning after a checkpoint, which
# Snakemake does while finishing the checkpoint's job. Timing changes nothing Snakemake decides.
TIMED_SNAKEMAKE = [
    sys.executable,
    "-c",
    """
import atexit, collections, functools, inspect, json, os, threading, time
from snakemake.cli import main
from snakemake.dag import DAG
from snakemake.scheduling.job_scheduler import JobScheduler
from snakemake.workflow import Workflow
seconds = collections.Counter()
stack = []
def timed(owner, name, phase):
    function = getattr(owner, name)
    def enter():
        if threading.current_thread() is not threading.main_thread():
            return False
        if stack and not (phase == "re-planning after checkpoints" and stack[-1][0] != "planning"):
            return False
        stack.append([phase, time.thread_time(), 0.0])
        return True
    def leave():
        own_phase, start, nested = stack.pop()
        spent = time.thread_time() - start
        seconds[own_phase] += spent - nested
        if stack:
            stack[-1][2] += spent
    if inspect.iscoroutinefunction(function):
        async def wrapper(*args, **kwargs):
            entered = enter()
            try:
                return await function(*args, **kwargs)
            finally:
                entered and leave()
    else:
        def wrapper(*args, **kwargs):
            entered = enter()
            try:
                return function(*args, **kwargs)
            finally:
                entered and leave()
    setattr(owner, name, functools.wraps(function)(wrapper))
timed(Workflow, "_build_dag", "planning")
timed(DAG, "postprocess", "planning")
timed(DAG, "update_checkpoint_dependencies", "re-planning after checkpoints")
timed(JobScheduler, "_finish_jobs", "finishing jobs")
timed(JobScheduler, "job_selector", "selecting ready jobs")
timed(JobScheduler, "run", "submitting and starting jobs")
atexit.register(lambda: open(os.environ["PHASE_TIMES"], "w").write(json.dumps(seconds)))
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
        "PHASE_TIMES": str(state / "phases.json"),
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
        "phases": json.loads((state / "phases.json").read_text()),
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
        per_patient: dict[int, dict[str, float]] = {}
        for patients in args.patients:
            result = simulate(root / f"cohort{patients}", patients, profile, bin_dir, template_dir)
            if result["done"] != patients:
                raise SystemExit(f"{patients} patients: only {result['done']} reached the cohort QC table")
            phases = dict(result["phases"])
            phases["rest (start-up, status checks, logging)"] = result["own"] - sum(phases.values())
            per_patient[patients] = {phase: 1000 * value / patients for phase, value in phases.items()}
            per_patient[patients]["all"] = 1000 * result["own"] / patients
            print(
                f"{patients} patients through prepare: {result['wall']:.0f} s wall, {result['jobs']} SLURM jobs; "
                f"Snakemake's own CPU {result['own']:.1f} s ({per_patient[patients]['all']:.1f} ms per patient); "
                f"its child processes (local jobs, fake SLURM commands) {result['children']:.1f} s CPU"
            )
        sizes = sorted(per_patient)
        growth_note = f"; growth {sizes[-1]} against {sizes[0]} patients" if len(sizes) > 1 else ""
        print(f"\nSnakemake's own CPU per patient (ms) at {', '.join(map(str, sizes))} patients, by phase{growth_note}")
        for phase in sorted(per_patient[sizes[-1]], key=lambda p: -per_patient[sizes[-1]][p]):
            figures = "  ".join(f"{per_patient[n].get(phase, 0.0):8.2f}" for n in sizes)
            small = per_patient[sizes[0]].get(phase, 0.0)
            growth = f"  {per_patient[sizes[-1]][phase] / small:5.2f}x" if len(sizes) > 1 and small > 0 else ""
            print(f"  {phase:<42}{figures}{growth}")


if __name__ == "__main__":
    main()
