"""SLURM operation without a cluster: the plan with profiles/slurm, and the sbatch calls that
snakemake-executor-plugin-slurm makes with it, through fake `sbatch`, `sacct`, `squeue`,
`scontrol` and `sacctmgr` on PATH. The fake sbatch records each call and queues nothing; the
fake status commands report every job as failed, so each run ends after its first submissions."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from .conftest import REPO, snakemake, write_config

spec = importlib.util.spec_from_file_location("slurm_sim", REPO / "benchmarks" / "slurm_sim.py")
slurm_sim = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slurm_sim)

FAKE_COMMANDS = {
    "sbatch": """#!/bin/sh
count=$(cat "$FAKE_SLURM/count" 2>/dev/null || echo 1000)
count=$((count + 1))
echo "$count" > "$FAKE_SLURM/count"
echo "$count $*" >> "$FAKE_SLURM/sbatch.log"
cat > /dev/null
echo "$count"
""",
    "sacct": """#!/bin/sh
cut -d' ' -f1 "$FAKE_SLURM/sbatch.log" 2>/dev/null | sed 's/$/|FAILED/'
""",
    "squeue": """#!/bin/sh
cut -d' ' -f1 "$FAKE_SLURM/sbatch.log" 2>/dev/null | sed 's/$/|FAILED/'
""",
    **slurm_sim.CLUSTER_INFO,
}


@pytest.fixture()
def fake_slurm(tmp_path) -> tuple[dict, Path, Path]:
    """(environment with the fake commands first on PATH, folder of their records, a copy of
    profiles/slurm with its placeholders filled in as a user would)."""
    bin_dir, records = tmp_path / "bin", tmp_path / "records"
    for folder in (bin_dir, records):
        folder.mkdir()
    for name, text in FAKE_COMMANDS.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    profile = slurm_sim.filled_profile(tmp_path / "profile")
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SLURM": str(records)}
    return env, records, profile


def submissions(finished: Path, env: dict, records: Path, profile: Path, *args: str) -> list[str]:
    """The sbatch command lines of one run with the profile, in a fresh copy of the `finished`
    working directory: Snakemake removes the outputs of the jobs the fake SLURM fails."""
    workdir = records.parent / f"run{len(list(records.parent.glob('run*')))}"
    shutil.copytree(finished, workdir, symlinks=True)
    (records / "sbatch.log").unlink(missing_ok=True)
    snakemake(
        workdir,
        "--profile",
        str(profile),
        "--retries",
        "0",
        "--latency-wait",
        "1",
        "--slurm-init-seconds-before-status-checks",
        "1",
        *args,
        check=False,
        env=env,
    )
    log = records / "sbatch.log"
    return log.read_text().splitlines() if log.is_file() else []


def group_jobs(dry_run_output: str) -> dict[str, list[str]]:
    """Group id -> the rules of its jobs, from a dry run's "Group job <id>" blocks."""
    groups, current = {}, None
    for line in dry_run_output.splitlines():
        if line.startswith("[") and "Group job " in line:
            current = groups.setdefault(line.split("Group job ")[1].split()[0], [])
        elif current is not None and line.strip().startswith(("rule ", "checkpoint ")) and line.startswith((" ", "\t")):
            current.append(line.split()[1].rstrip(":"))
        elif line and not line[0].isspace():
            current = None
    return groups


def test_a_profile_that_still_holds_its_placeholders_stops_before_planning(tmp_path):
    result = snakemake(tmp_path, "--profile", str(REPO / "profiles" / "slurm"), "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "the profile still holds the placeholders" in output and "<your-account>" in output and "<gpu-partition>" in output
    assert "Job stats" not in output


def test_the_profile_batches_patients_and_sends_gpu_rules_to_the_gpu_partition(tmp_path, fake_slurm):
    """Dry run of 121 demo patients with the profile: their first jobs form groups of at most 50
    patients (group-components), not one cohort-sized group; training goes to the GPU partition
    with one GPU, every other job to the CPU partition."""
    env, _, profile = fake_slurm
    config = write_config(tmp_path, {"demo": {"patients_per_class": 40, "matrix": 128}})
    result = snakemake(tmp_path, "--configfile", str(config), "--profile", str(profile), "-n", env=env)
    groups = group_jobs(result.stdout)
    assert sorted(groups) == ["prepare-0", "prepare-1", "prepare-2"]
    # 121 patients (one scout-only): each patient's phantom and ingest jobs, 50 patients a group.
    assert [(rules.count("phantom"), rules.count("ingest")) for _, rules in sorted(groups.items())] == [(50, 50), (50, 50), (21, 21)]
    jobs, rule = {}, None
    for line in result.stdout.splitlines():
        if line.strip().startswith(("rule ", "checkpoint ")):
            rule = line.split()[1].rstrip(":")
        elif line.strip().startswith("resources:") and rule:
            jobs.setdefault(rule, line)
    assert {"phantom", "train_fold"} <= set(jobs)
    assert all("slurm_account=lab-account" in r for r in jobs.values())
    assert "slurm_partition=gpu" in jobs["train_fold"] and "gpu=1" in jobs["train_fold"]
    assert all("slurm_partition=cpu" in r for rule, r in jobs.items() if rule != "train_fold")


def option(call: str, pattern: str) -> str | None:
    found = re.search(pattern, call)
    return found.group(1) if found else None


@pytest.mark.slow
def test_sbatch_calls_of_the_gpu_training_and_the_grouped_per_patient_jobs(training_demo, fake_slurm, tmp_path):
    workdir, config = training_demo
    env, records, profile = fake_slurm
    common = ("--configfile", str(config))

    training = submissions(workdir, env, records, profile, *common, "--forcerun", "train_fold", "--until", "train_fold")
    assert len(training) == 3  # one SLURM job per fold
    for call in training:
        assert option(call, r"-p '?(\w+)'?") == "gpu" and option(call, r"-A '?([\w-]+)'?") == "lab-account"
        assert "--gpus=1" in call and option(call, r"--cpus-per-gpu[= ](\d+)") == "8" and "--requeue" in call
        assert option(call, r"--mem (\d+)") == "16000" and option(call, r"-t '?(\d+)'?") == "720"
        assert "logs/slurm/rule_train_fold/" in call

    maps = submissions(workdir, env, records, profile, *common, "--forcerun", "cam", "--until", "cam")
    assert len(maps) == 1, maps  # the maps of all 9 patients in one job, on one GPU, one after another
    call = maps[0]
    assert "logs/slurm/group_maps" in call and option(call, r"-p '?(\w+)'?") == "gpu" and "--gpus=1" in call
    assert option(call, r"--mem (\d+)") == "4000" and option(call, r"-t '?(\d+)'?") == str(9 * 5)

    prepare = submissions(workdir, env, records, profile, *common, "--forcerun", "ingest", "--until", "ingest")
    assert len(prepare) == 1, prepare  # the first step of all 10 patients' chains in one CPU job
    call = prepare[0]
    assert "logs/slurm/group_prepare" in call and option(call, r"-p '?(\w+)'?") == "cpu" and "--gpus" not in call
    # Two at a time within the job (this test's --cores 2; the profile's 8 on a cluster): five rounds of 10 minutes.
    assert (
        option(call, r"--mem (\d+)") == "4000"
        and option(call, r"-t '?(\d+)'?") == str(5 * 10)
        and option(call, r"--cpus-per-task[= ](\d+)") == "2"
    )

    # With lungs.method lungmask the masks need a GPU: rule lungs_gpu, the GPU partition, and
    # the masks and caches of the patients in one GPU job.
    from .lungmask_weights import write_weights

    weights = write_weights(tmp_path / "weights")
    lungmask = write_config(tmp_path / "lungmask", {"lungs": {"method": "lungmask", "lungmask": {"weights": str(weights)}}})
    masks = submissions(
        workdir, env, records, profile, "--configfile", str(config), str(lungmask), "--forcerun", "lungs_gpu", "--until", "lungs_gpu"
    )
    assert len(masks) == 1, masks
    call = masks[0]
    assert "logs/slurm/group_masks" in call and option(call, r"-p '?(\w+)'?") == "gpu" and "--gpus=1" in call
