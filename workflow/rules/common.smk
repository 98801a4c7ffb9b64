"""Configuration, sample sheet and helpers shared by every rule file.

Validation happens here, once, before any job starts: a bad config key or sample-sheet row stops
the run with a message naming it.
"""

import os

from lungcam.config import validate_config
from lungcam.phantom import cohort_layout, plan_cohort, sample_rows
from lungcam.records import read_record
from lungcam.samplesheet import load_sample_sheet

import pandas as pd

# Jobs import the lungcam package from this repository, also inside per-rule conda
# environments and on cluster nodes (envvars passes it on).
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (workflow.basedir, os.environ.get("PYTHONPATH", "")) if p)


envvars:
    "PYTHONPATH",


validate_config(config)

RESULTS = "results"
WORK = "work"
LOGS = "logs"
DEMO_ROOT = "demo"
DEMO = config["samples"] == "demo"

if DEMO:
    unknown = set(config["classes"]) - {"COVID-19", "CAP", "NP"}
    if unknown:
        raise ValueError(f"the demo cohort knows the classes COVID-19, CAP and NP, not {sorted(unknown)}")
    DEMO_PLANS = {p.patient_id: p for p in plan_cohort(config["demo"]["patients_per_class"], config["demo"]["seed"], tuple(config["classes"]))}
    SAMPLES = pd.DataFrame(sample_rows(list(DEMO_PLANS.values()), DEMO_ROOT)).set_index("patient_id", drop=False)
else:
    SAMPLES = load_sample_sheet(config["samples"], config["classes"])
PATIENTS = list(SAMPLES.index)


wildcard_constraints:
    patient="[A-Za-z0-9_-]+",


def startup_message() -> str:
    source = "the synthetic demo cohort (set 'samples' to a sample sheet for real data)" if DEMO else config["samples"]
    return f"lungcam: {len(PATIENTS)} patients from {source}; outputs in {RESULTS}/"


def ingest_record(patient: str) -> dict:
    """The ingest record of `patient` (waits for the ingest checkpoint of that patient)."""
    stage = checkpoints.ingest.get(patient=patient).output.stage
    return read_record(os.path.join(stage, "record.json"))


def patient_qc_inputs(wildcards) -> dict:
    """Stage records of one patient; an ok patient's published outputs are requested too."""
    inputs = {"ingest": f"{WORK}/ingest/{wildcards.patient}"}
    if ingest_record(wildcards.patient)["status"] == "ok":
        inputs["nifti"] = f"{RESULTS}/nifti/{wildcards.patient}.nii.gz"
    return inputs


def log_path(rule_name: str) -> str:
    return f"{LOGS}/{rule_name}/{{patient}}.log"


def benchmark_path(rule_name: str) -> str:
    return f"{LOGS}/benchmarks/{rule_name}/{{patient}}.tsv"
