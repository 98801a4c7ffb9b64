"""Configuration, the sample sheet, and where every file goes (`path`).

Validation happens here, once, before any job starts: a bad config key or sample-sheet row stops
the run with a message naming it. Each stage's rule file holds its own input functions.
"""

import functools
import os
import re
import shlex
import sys
from pathlib import Path

from lungcam.core.config import apply_demo_overrides, validate_config
from lungcam.core.folds import task_classes
from lungcam.phantom import plan_cohort, sample_rows
from lungcam.core.records import read_record, read_status_table, write_record
from lungcam.core.samplesheet import SampleSheetError, lesion_masks, load_sample_sheet
from lungcam.core.snakemake_jobs import skip_pipe_lookups
from lungcam.ingest import shared_scan_problems

import pandas as pd

# Jobs import the lungcam package from this repository, also inside per-rule conda
# environments and on cluster nodes (envvars passes it on).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (workflow.basedir, os.environ.get("PYTHONPATH", "")) if p)
# Shell rules call `python`/`torchrun`: those next to the interpreter running Snakemake, unless a
# per-rule conda environment (activated in the job) puts its own first.
os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))


envvars:
    "PYTHONPATH",
    "PATH",


validate_config(config)

# ---- where every file goes -----------------------------------------------------------------

RESULTS, WORK, LOGS, DEMO_ROOT = "results", "work", "logs", "demo"
# Every file the workflow writes, by name. results/ is what users get (../shared/CONTRACT.md),
# work/ what stages pass on, logs/ each job's log and benchmark, demo/ the synthetic cohort.
# {model} is fold<k> or final. qc_records is one job's folder (rule patient_qc) that holds only
# the cohort's QC files, `qc`.
LAYOUT = {
    "nifti": "results/nifti/{patient}.nii.gz",
    "sidecar": "results/nifti/{patient}.json",
    "lungs": "results/lungs/{patient}.nii.gz",
    "lobes": "results/lungs/{patient}_lobes.nii.gz",
    "lung_montage": "results/lungs/{patient}.png",
    "qc_records": "results/qc",
    "qc": "results/qc/{patient}.json",
    "cam": "results/cam/{patient}.nii.gz",
    "key_slices": "results/cam/{patient}_key_slices.png",
    "lesions": "results/lesions/{patient}.tsv",
    "burden": "results/lesions/{patient}.json",
    "report": "results/reports/{patient}.html",
    "model": "results/model/{model}.pt",
    "curves": "results/training/{model}.tsv",
    "curves_png": "results/training/{model}.png",
    "figure": "results/figures/{name}.png",
    "cohort_qc": "results/cohort_qc.tsv",
    "predictions": "results/predictions.tsv",
    "localisation_table": "results/localisation.tsv",
    "localisation": "results/localisation.json",
    "metrics": "results/metrics.json",
    "provenance": "results/provenance.json",
    "summary": "results/summary.html",
    "ingest": "work/ingest/{patient}",
    "lung_record": "work/lungs/{patient}.json",
    "cache": "work/cache/{patient}",
    "status": "work/status/{stage}.tsv",
    "scan_index": "work/status/scan_index.json",
    "folds": "work/train/folds.tsv",
    "bank": "work/train/bank",
    "training_work": "work/train/{model}",
    "fold_predictions": "work/train/{model}/predictions.tsv",
    "classification_metrics": "work/metrics/classification.json",
    "run": "work/run.json",
    "verdict": "work/verdict.json",
    "models": "work/models.json",
    "report_site": "work/report_site",
    "log": "logs/{rule}/{job}.log",
    "cohort_log": "logs/{rule}.log",
    "benchmark": "logs/benchmarks/{rule}/{job}.tsv",
    "cohort_benchmark": "logs/benchmarks/{rule}.tsv",
    "benchmarks": "logs/benchmarks",
    "demo_dicom": "demo/dicom/{patient}",
    "demo_lungs": "demo/truth/{patient}_lungs.nii.gz",
    "demo_lesions": "demo/truth/{patient}_lesions.nii.gz",
    "demo_record": "demo/truth/{patient}.json",
    "demo_samples": "demo/samples.tsv",
}


class _KeepWildcards(dict):
    def __missing__(self, key: str) -> str:
        return f"{{{key}}}"


def path(name: str, /, **wildcards) -> str:
    """The path of file `name` (LAYOUT) with the given wildcards filled in; the others stay
    as Snakemake wildcards: path("nifti") is a rule's pattern, path("nifti", patient=p) one file."""
    return LAYOUT[name].format_map(_KeepWildcards(wildcards))


def log_path(rule_name: str, job: str | None = "{patient}") -> str:
    """A job's log: per patient (or per `job` pattern), or the cohort job's (job None)."""
    return path("log", rule=rule_name, job=job) if job else path("cohort_log", rule=rule_name)


def benchmark_path(rule_name: str, job: str | None = "{patient}") -> str:
    """A job's benchmark file, named like its log."""
    return path("benchmark", rule=rule_name, job=job) if job else path("cohort_benchmark", rule=rule_name)


def memory_mb(base: int):
    """A rule's mem_mb: `base` at the first attempt, twice that at the first retry, and so on,
    so that a job killed for memory on a cluster is resubmitted with more (profile `retries`)."""
    return lambda wildcards, attempt: base * attempt


# ---- the cohort ----------------------------------------------------------------------------

DEMO = config["samples"] == "demo"
MODE = config["mode"]
# The settings that make the synthetic cohort (not its demo.train and demo.cache overrides, so
# that changing those retrains without regenerating the patients).
DEMO_COHORT = {k: v for k, v in config["demo"].items() if k not in ("train", "cache", "overrides")}
if DEMO:
    apply_demo_overrides(config)
    unknown = set(config["classes"]) - {"COVID-19", "CAP", "NP"}
    if unknown:
        raise ValueError(f"the demo cohort knows the classes COVID-19, CAP and NP, not {sorted(unknown)}")
    DEMO_PLANS = {
        p.patient_id: p
        for p in plan_cohort(
            config["demo"]["patients_per_class"], config["demo"]["seed"], tuple(config["classes"]), scout_only=config["demo"]["scout_only"]
        )
    }
    SAMPLES = pd.DataFrame(sample_rows(list(DEMO_PLANS.values()), DEMO_ROOT)).set_index("patient_id", drop=False)
else:
    SAMPLES = load_sample_sheet(config["samples"], config["classes"], require_labels=MODE == "train", output_dirs=(RESULTS, WORK, LOGS))
PATIENTS = list(SAMPLES.index)
SAMPLE_SHEET = path("demo_samples") if DEMO else config["samples"]
DICOM_DIRS = SAMPLES["dicom_dir"].to_dict()  # a dict lookup per ingest job, not a DataFrame one
STUDY_UIDS = {p: uid for p, uid in SAMPLES.get("study_uid", pd.Series(dtype=str)).items() if isinstance(uid, str) and uid}
# The sample sheet's optional columns (cells may be empty).
LESION_MASKS = lesion_masks(SAMPLES)
SITES = {p: s for p, s in SAMPLES.get("site", pd.Series(dtype=str)).items() if isinstance(s, str) and s}
# One scan under two patient ids would sit in two cross-validation folds: refused before any job
# starts. One header read per folder, cached; only where Snakemake plans, not in every cluster job.
if not DEMO and workflow.is_main_process:
    SHARED_SCANS = shared_scan_problems(DICOM_DIRS, path("scan_index"))
    if SHARED_SCANS:
        raise SampleSheetError(f"sample sheet {config['samples']}: " + "; ".join(SHARED_SCANS))

TASK_CLASSES = task_classes(config["train"]["task"], config["classes"])
if MODE == "predict":
    from lungcam.train import read_model_metadata  # imports torch: only in mode predict

    # Slices are prepared exactly as for the model's training cohort, whatever this config says.
    if not Path(config["predict"]["model"]).is_file():
        raise ValueError(f"mode predict needs predict.model, a model file; '{config['predict']['model']}' does not exist")
    MODEL_PREPROCESSING = read_model_metadata(config["predict"]["model"])["preprocessing"]
    config["train"]["input_size"] = MODEL_PREPROCESSING["input_size"]
    config["train"]["min_lung_fraction"] = MODEL_PREPROCESSING["min_lung_fraction"]
    config["cache"] = dict(MODEL_PREPROCESSING["cache"])


# ---- cluster jobs --------------------------------------------------------------------------

PATIENT_INDEX = {patient: i for i, patient in enumerate(PATIENTS)}


def cluster_group(name: str):
    """A per-patient rule's SLURM group. With `group-components: {name}: N` (profiles/slurm),
    the jobs of each N consecutive patients of the sample sheet form group `{name}-<batch>`, one
    SLURM job; without it (local runs) no group. A group never holds more than N patients, so
    Snakemake's planning, which checks every job of a group against the others, stays linear in
    patients. The batch ids count as `name` for group-components (`parent_groupids`: the map
    Snakemake keeps for group ids filled in from wildcards)."""

    def group(wildcards) -> str | None:
        size = (workflow.group_settings.group_components if workflow.group_settings else {}).get(name)
        if not size:
            return None
        batch = f"{name}-{PATIENT_INDEX[wildcards.patient] // size}"
        workflow.parent_groupids[batch] = name
        return batch

    return group


def unfilled_placeholders() -> list[str]:
    """The `<...>` placeholders (profiles/slurm's `<your-account>`, `<cpu-partition>`, ...) left
    in the resources this run was given."""
    settings = workflow.resource_settings
    values = list(getattr(settings.default_resources, "args", None) or [])
    for resources in settings.overwrite_resources.values():
        values += [getattr(resource, "raw", resource) for resource in resources.values()]
    return sorted({found for value in values for found in re.findall(r"<[\w-]+>", str(value))})


# A profile that still holds its placeholders would plan the whole cohort and then submit every
# job to accounts and partitions the cluster refuses.
PLACEHOLDERS = unfilled_placeholders() if workflow.is_main_process else []
if PLACEHOLDERS:
    raise ValueError(
        f"the profile still holds the placeholders {', '.join(PLACEHOLDERS)}: replace them in its "
        "config.yaml with your SLURM account and partitions (`sacctmgr show assoc user=$USER`, `sinfo -s`; "
        "docs/hpc.md)"
    )


wildcard_constraints:
    patient="[A-Za-z0-9_-]+",


# Absolute paths in a command line may name people or places: outputs keep only the last part.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/[^\s=,:;'\"]+")


def record_run() -> None:
    """Write this run's command line (absolute paths cut to their last part) and start time
    (work/run.json) for provenance.json."""
    from datetime import datetime, timezone

    program = Path(sys.argv[0]).name
    arguments = [ABSOLUTE_PATH.sub(lambda m: f"…/{Path(m.group(0)).name}", a) for a in sys.argv[1:]]
    command = shlex.join(["snakemake" if program == "__main__.py" else program, *arguments])  # python -m snakemake
    write_record(path("run"), {"command": command, "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})


def finish_message() -> str:
    """Where the summary is and what its verdict box says (nothing when no summary was made)."""
    if not Path(path("verdict")).is_file():
        return "lungcam: done."
    verdict = read_record(path("verdict"))
    lines = [f"lungcam: done; the cohort summary is {verdict['summary']}"]
    lines += [f"  {item['level']}: {item['text']}" for item in verdict["verdict"]] or [
        "  no failed stage, exclusion or chance-level metric"
    ]
    return "\n".join(lines)


def startup_message() -> str:
    source = "the synthetic demo cohort (set 'samples' to a sample sheet for real data)" if DEMO else config["samples"]
    return f"lungcam: {len(PATIENTS)} patients from {source}; outputs in {RESULTS}/"


# ---- who goes on ---------------------------------------------------------------------------


@functools.cache
def _status_table(path: str, mtime_ns: int) -> dict[str, str]:
    """A stage's status table, read once per version of the file (input functions ask per patient)."""
    return read_status_table(path)


def stage_statuses(checkpoint) -> dict[str, str]:
    """patient -> status after one stage, from that stage's status checkpoint (waits for it)."""
    table = checkpoint.get().output[0]
    return _status_table(table, os.stat(table).st_mtime_ns)
