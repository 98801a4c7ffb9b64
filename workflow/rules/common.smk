"""Configuration, sample sheet and helpers shared by every rule file.

Validation happens here, once, before any job starts: a bad config key or sample-sheet row stops
the run with a message naming it.
"""

import functools
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from lungcam.core.config import apply_demo_overrides, validate_config
from lungcam.core.folds import task_classes
from lungcam.lungs import LungmaskSettings, RESOURCE_DIR, require_weights, weights_path
from lungcam.phantom import cohort_layout, plan_cohort, sample_rows
from lungcam.core.records import read_status_table
from lungcam.core.samplesheet import SampleSheetError, load_sample_sheet
from lungcam.ingest import RECORD_NAME, shared_scan_problems

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

RESULTS = "results"
WORK = "work"
LOGS = "logs"
DEMO_ROOT = "demo"
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
DICOM_DIRS = SAMPLES["dicom_dir"].to_dict()  # a dict lookup per ingest job, not a DataFrame one
STUDY_UIDS = {p: uid for p, uid in SAMPLES.get("study_uid", pd.Series(dtype=str)).items() if isinstance(uid, str) and uid}
# One scan under two patient ids would sit in two cross-validation folds: refused before any job
# starts. One header read per folder, cached; only where Snakemake plans, not in every cluster job.
if not DEMO and workflow.is_main_process:
    SHARED_SCANS = shared_scan_problems(DICOM_DIRS, f"{WORK}/status/scan_index.json")
    if SHARED_SCANS:
        raise SampleSheetError(f"sample sheet {config['samples']}: " + "; ".join(SHARED_SCANS))

# ---- training ------------------------------------------------------------------------------

TASK_CLASSES = task_classes(config["train"]["task"], config["classes"])
TASK_CLASSES_JSON = json.dumps(TASK_CLASSES)
TRAIN_SETTINGS_JSON = json.dumps(config["train"], sort_keys=True)
TRAIN_GPUS = config["train"]["gpus"] if config["train"]["device"] != "cpu" else 0
CAM_GPUS = 1 if config["train"]["device"] != "cpu" else 0
TRAIN_LAUNCHER = f"torchrun --standalone --nproc_per_node {config['train']['gpus']}" if config["train"]["gpus"] > 1 else "python"
if MODE == "predict":
    from lungcam.train import read_model_metadata  # imports torch: only in mode predict

    # Slices are prepared exactly as for the model's training cohort, whatever this config says.
    if not Path(config["predict"]["model"]).is_file():
        raise ValueError(f"mode predict needs predict.model, a model file; '{config['predict']['model']}' does not exist")
    MODEL_PREPROCESSING = read_model_metadata(config["predict"]["model"])["preprocessing"]
    config["train"]["input_size"] = MODEL_PREPROCESSING["input_size"]
    config["train"]["min_lung_fraction"] = MODEL_PREPROCESSING["min_lung_fraction"]
    config["cache"] = dict(MODEL_PREPROCESSING["cache"])


def final_targets() -> list[str]:
    """Cohort-level outputs requested by `rule all`."""
    targets = [f"{RESULTS}/predictions.tsv"]
    if MODE == "train" and config["train"]["final_model"]:
        targets.append(f"{RESULTS}/model/final.pt")
    return targets


wildcard_constraints:
    patient="[A-Za-z0-9_-]+",


def startup_message() -> str:
    source = "the synthetic demo cohort (set 'samples' to a sample sheet for real data)" if DEMO else config["samples"]
    return f"lungcam: {len(PATIENTS)} patients from {source}; outputs in {RESULTS}/"


@functools.cache
def _status_table(path: str, mtime_ns: int) -> dict[str, str]:
    """A stage's status table, read once per version of the file (input functions ask per patient)."""
    return read_status_table(path)


def stage_statuses(checkpoint) -> dict[str, str]:
    """patient -> status after one stage, from that stage's status checkpoint (waits for it)."""
    path = checkpoint.get().output[0]
    return _status_table(path, os.stat(path).st_mtime_ns)


def ingest_ok(patient: str) -> bool:
    """Whether `patient` passed ingest (waits for the cohort's ingest status)."""
    return stage_statuses(checkpoints.ingest_status).get(patient) == "ok"


def lungs_ok(patient: str) -> bool:
    """Whether `patient` passed ingest and lung QC (waits for the cohort's lung status)."""
    return ingest_ok(patient) and stage_statuses(checkpoints.lungs_status).get(patient) == "ok"


def lungs_status_inputs(wildcards) -> dict:
    """The lung records of the patients that passed ingest."""
    return {"records": expand(rules.lungs.output.record, patient=[p for p in PATIENTS if ingest_ok(p)])}


def qc_records(wildcards) -> list[str]:
    """Every patient's QC file, requested once both status tables exist: each patient's QC job
    is then planned once, with its final inputs, instead of waiting on a checkpoint."""
    stage_statuses(checkpoints.lungs_status)
    return expand(f"{RESULTS}/qc/{{patient}}.json", patient=PATIENTS)


def patient_qc_inputs(wildcards) -> dict:
    """Stage records of one patient, and the outputs of every stage the patient reached.

    The patient's QC file is the last per-patient output, so requesting it builds the patient's
    whole chain up to the stage that excluded it (if any).
    """
    patient = wildcards.patient
    inputs = {"ingest": f"{WORK}/ingest/{patient}"}
    if ingest_ok(patient):
        inputs["nifti"] = f"{RESULTS}/nifti/{patient}.nii.gz"
        inputs["lungs"] = f"{WORK}/lungs/{patient}.json"
        if lungs_ok(patient):
            inputs["cache"] = f"{WORK}/cache/{patient}"
    return inputs


# ---- class activation maps -------------------------------------------------------------

# The models that map patients: the fold models (each maps the patients it held out), or predict.model.
CAM_MODELS = (
    expand(f"{RESULTS}/model/fold{{fold}}.pt", fold=range(config["train"]["folds"])) if MODE == "train" else [config["predict"]["model"]]
)


def mapped_patients() -> list[str]:
    """The patients that passed ingest and lung QC, so get a map (waits for the status checkpoints)."""
    return [p for p in PATIENTS if lungs_ok(p)]


SLICE_LABELS = config["cam"]["slice_labels"]
SLICE_LABELLED = set(pd.read_csv(SLICE_LABELS, sep="\t", dtype=str)["patient_id"]) if SLICE_LABELS else set()
# The sample sheet's lesion masks (column optional, cells may be empty).
LESION_MASKS = {p: m for p, m in SAMPLES.get("lesion_mask", pd.Series(dtype=str)).items() if isinstance(m, str) and m}


def localised_patients() -> list[str]:
    """Mapped patients with a lesion mask or slice labels."""
    return [p for p in mapped_patients() if p in LESION_MASKS or p in SLICE_LABELLED]


def cam_targets(wildcards) -> list[str]:
    """A map and lesion candidates per mapped patient; localisation figures when any of them has
    a lesion mask or slice labels."""
    mapped = mapped_patients()
    targets = [f"{RESULTS}/{kind}/{p}.{suffix}" for p in mapped for kind, suffix in (("cam", "nii.gz"), ("lesions", "tsv"))]
    if localised_patients():
        targets.append(f"{RESULTS}/localisation.json")
    return targets


def localisation_inputs(wildcards) -> dict:
    """Map and lungs of every localised patient, their lesion masks, and the slice-label file."""
    patients = localised_patients()
    inputs = {
        "cams": [f"{RESULTS}/cam/{p}.nii.gz" for p in patients],
        "lungs": [f"{RESULTS}/lungs/{p}.nii.gz" for p in patients],
        "masks": [LESION_MASKS[p] for p in patients if p in LESION_MASKS],
    }
    if SLICE_LABELS:
        inputs["slice_labels"] = SLICE_LABELS
    return inputs


# ---- lungmask weights ----------------------------------------------------------------------

LUNGMASK = config["lungs"]["method"] == "lungmask"
LUNGMASK_SETTINGS = LungmaskSettings.from_config(config["lungs"]["lungmask"])
LOBES = LUNGMASK and LUNGMASK_SETTINGS.model == "LTRCLobes"
LUNGMASK_WEIGHTS = weights_path(LUNGMASK_SETTINGS)
LUNGMASK_FILL = weights_path(LUNGMASK_SETTINGS, "R231", LUNGMASK_SETTINGS.fill_weights) if LOBES else None
if LUNGMASK:  # a configured weights file must exist: no rule can make it
    for configured, path, model in (
        (LUNGMASK_SETTINGS.weights, LUNGMASK_WEIGHTS, LUNGMASK_SETTINGS.model),
        (LUNGMASK_SETTINGS.fill_weights, LUNGMASK_FILL, "R231"),
    ):
        if configured:
            require_weights(path, model, LUNGMASK_SETTINGS.url(model))
# (path, url) of the weight files the download rule can fetch into resources/.
LUNGMASK_DOWNLOADS = [
    (path, LUNGMASK_SETTINGS.url(model))
    for path, model in ((LUNGMASK_WEIGHTS, LUNGMASK_SETTINGS.model), (LUNGMASK_FILL, "R231"))
    if path is not None and Path(path).parent == RESOURCE_DIR
] or [(RESOURCE_DIR / Path(LUNGMASK_SETTINGS.url()).name, LUNGMASK_SETTINGS.url())]


def lungs_inputs(wildcards) -> dict:
    inputs = {"volume": f"{RESULTS}/nifti/{wildcards.patient}.nii.gz"}
    if LUNGMASK:
        inputs["weights"] = str(LUNGMASK_WEIGHTS)
        if LOBES:
            inputs["fill_weights"] = str(LUNGMASK_FILL)
    return inputs


def lobes_output() -> dict:
    return {"lobes": f"{RESULTS}/lungs/{{patient}}_lobes.nii.gz"} if LOBES else {}


def memory_mb(base: int):
    """A rule's mem_mb: `base` at the first attempt, twice that at the first retry, and so on,
    so that a job killed for memory on a cluster is resubmitted with more (profile `retries`)."""
    return lambda wildcards, attempt: base * attempt


def log_path(rule_name: str) -> str:
    return f"{LOGS}/{rule_name}/{{patient}}.log"


def benchmark_path(rule_name: str) -> str:
    return f"{LOGS}/benchmarks/{rule_name}/{{patient}}.tsv"


# ---- metrics and reports -------------------------------------------------------------------

SITES = {p: s for p, s in SAMPLES.get("site", pd.Series(dtype=str)).items() if isinstance(s, str) and s}
SAMPLE_SHEET = f"{DEMO_ROOT}/samples.tsv" if DEMO else config["samples"]
# Classification metrics need labels: always in mode train, where the sheet gives them in predict.
LABELLED = MODE == "train" or bool(SAMPLES.get("label", pd.Series(dtype=str)).isin(TASK_CLASSES).any())
# The model that classified the patients of each predictions.tsv fold.
REPORT_MODELS = (
    {str(f): f"{RESULTS}/model/fold{f}.pt" for f in range(config["train"]["folds"])}
    if MODE == "train"
    else {"predict": config["predict"]["model"]}
)
CLASSIFICATION_FIGURES = [f"{RESULTS}/figures/{name}.png" for name in ("roc_pr", "confusion", "reliability")]


def classification_metrics_inputs(wildcards) -> dict:
    """Predictions, the QC records (for the nuisance-only baseline), and the models and slice
    bank for the slice-level metrics."""
    inputs = {"predictions": f"{RESULTS}/predictions.tsv", "qc": qc_records(wildcards)}
    if LABELLED:
        inputs["models"] = list(REPORT_MODELS.values())
        inputs["bank"] = rules.slice_bank.output[0]
    return inputs


def metrics_inputs(wildcards) -> dict:
    """The classification metrics, and the localisation figures where there are any."""
    inputs = {"classification": rules.classification_metrics.output[0]}
    if localised_patients():
        inputs["localisation"] = f"{RESULTS}/localisation.json"
    return inputs


def provenance_inputs(wildcards) -> dict:
    """Every patient's QC record (with its DICOM checksum), the sample sheet, and the other
    files the run read: lesion masks, slice labels, the prediction model."""
    inputs = {"qc": qc_records(wildcards), "sample_sheet": SAMPLE_SHEET, "masks": list(LESION_MASKS.values())}
    if SLICE_LABELS:
        inputs["slice_labels"] = SLICE_LABELS
    if MODE == "predict":
        inputs["model"] = config["predict"]["model"]
    return inputs


def patient_report_inputs(wildcards) -> dict:
    """What one patient's report shows: its QC record and lung montage, and, once it was
    classified and mapped, its prediction, key slices and lesion candidates."""
    patient = wildcards.patient
    inputs = {"qc": f"{RESULTS}/qc/{patient}.json", "provenance": f"{RESULTS}/provenance.json"}
    if ingest_ok(patient):
        inputs["montage"] = f"{RESULTS}/qc/{patient}_lungs.png"
        if lungs_ok(patient):
            inputs |= {
                "predictions": f"{RESULTS}/predictions.tsv",
                "key_slices": f"{RESULTS}/cam/{patient}_key_slices.png",
                "lesions": f"{RESULTS}/lesions/{patient}.tsv",
                "burden": f"{RESULTS}/lesions/{patient}.json",
            }
    return inputs


def summary_inputs(wildcards) -> dict:
    """Every patient's report and QC record, the cohort outputs, and the figures."""
    inputs = {
        "reports": expand(f"{RESULTS}/reports/{{patient}}.html", patient=PATIENTS),
        "qc": qc_records(wildcards),
        "burdens": [f"{RESULTS}/lesions/{p}.json" for p in mapped_patients()],
        "predictions": f"{RESULTS}/predictions.tsv",
        "metrics": f"{RESULTS}/metrics.json",
        "provenance": f"{RESULTS}/provenance.json",
        "figures": CLASSIFICATION_FIGURES if LABELLED else [],
        "curves": expand(f"{RESULTS}/training/fold{{fold}}.png", fold=range(config["train"]["folds"])) if MODE == "train" else [],
    }
    return inputs
