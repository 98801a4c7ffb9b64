"""What the lungs rules are given: the scan, lungmask's or the lung prior's weights; who passed lung QC."""

from lungcam.lungs import LungmaskSettings, PriorSettings, RESOURCE_DIR, require_weights, weights_path

LUNGMASK = config["lungs"]["method"] == "lungmask"
LUNGMASK_SETTINGS = LungmaskSettings.from_config(config["lungs"]["lungmask"])
LOBES = LUNGMASK and LUNGMASK_SETTINGS.model == "LTRCLobes"
LUNGMASK_WEIGHTS = weights_path(LUNGMASK_SETTINGS)
LUNGMASK_FILL = weights_path(LUNGMASK_SETTINGS, "R231", LUNGMASK_SETTINGS.fill_weights) if LOBES else None
if LUNGMASK:  # a configured weights file must exist: no rule can make it
    for configured, weights, model in (
        (LUNGMASK_SETTINGS.weights, LUNGMASK_WEIGHTS, LUNGMASK_SETTINGS.model),
        (LUNGMASK_SETTINGS.fill_weights, LUNGMASK_FILL, "R231"),
    ):
        if configured:
            require_weights(weights, model, LUNGMASK_SETTINGS.url(model))
# (path, url) of the weight files the download rule can fetch into resources/.
LUNGMASK_DOWNLOADS = [
    (weights, LUNGMASK_SETTINGS.url(model))
    for weights, model in ((LUNGMASK_WEIGHTS, LUNGMASK_SETTINGS.model), (LUNGMASK_FILL, "R231"))
    if weights is not None and Path(weights).parent == RESOURCE_DIR
] or [(RESOURCE_DIR / Path(LUNGMASK_SETTINGS.url()).name, LUNGMASK_SETTINGS.url())]

# The learned lung prior: trained by rule train_lung_prior unless a weights file is configured,
# which must then exist.
PRIOR = PriorSettings.from_config(config["lungs"]["prior"])
USE_PRIOR = not LUNGMASK and PRIOR.use
if USE_PRIOR and PRIOR.weights:
    PRIOR.require()

# The weights files the lung masks are made with, by role (recorded in provenance.json).
if LUNGMASK:
    LUNG_WEIGHTS = {"lungmask": str(LUNGMASK_WEIGHTS)} | ({"lungmask_fill": str(LUNGMASK_FILL)} if LOBES else {})
else:
    LUNG_WEIGHTS = {"prior": str(PRIOR.path())} if USE_PRIOR else {}

# The SLURM group of the lungs and cache jobs: with lungmask a GPU job per batch of patients.
LUNGS_GROUP = cluster_group("masks" if LUNGMASK else "prepare")


def lungs_inputs(wildcards) -> dict:
    """The scan, and lungmask's or the lung prior's weights when they are used."""
    return {"volume": path("nifti", patient=wildcards.patient)} | LUNG_WEIGHTS


def lungs_status_inputs(wildcards) -> dict:
    """The lung records of the patients that passed ingest."""
    return {"records": expand(path("lung_record"), patient=[p for p in PATIENTS if ingest_ok(p)])}


def lungs_ok(patient: str) -> bool:
    """Whether `patient` passed ingest and lung QC (waits for the cohort's lung status)."""
    return ingest_ok(patient) and stage_statuses(checkpoints.lungs_status).get(patient) == "ok"
