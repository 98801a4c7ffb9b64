"""What the metrics, figures, reports and the summary read."""

# Classification metrics need labels: always in mode train, where the sheet gives them in predict.
LABELLED = MODE == "train" or bool(SAMPLES.get("label", pd.Series(dtype=str)).isin(TASK_CLASSES).any())
# The model that classified the patients of each predictions.tsv fold.
REPORT_MODELS = {str(f): path("model", model=f"fold{f}") for f in FOLDS} if MODE == "train" else {"predict": config["predict"]["model"]}
CLASSIFICATION_FIGURES = {name: path("figure", name=name) for name in ("roc_pr", "confusion", "reliability")}


def classification_metrics_inputs(wildcards) -> dict:
    """Predictions, the QC records (for the nuisance-only baseline), and the models and slice
    bank for the slice-level metrics."""
    inputs = {"predictions": path("predictions"), "qc": path("qc_records")}
    if LABELLED:
        inputs["models"] = list(REPORT_MODELS.values())
        inputs["bank"] = path("bank")
    return inputs


def metrics_inputs(wildcards) -> dict:
    """The classification metrics, and the localisation figures where there are any."""
    inputs = {"classification": path("classification_metrics")}
    if localised_patients():
        inputs["localisation"] = path("localisation")
    return inputs


def provenance_inputs(wildcards) -> dict:
    """Every patient's QC record (with its DICOM checksum), the sample sheet, and the other
    files the run read: lesion masks, slice labels, the lung masks' weights, the prediction
    model. Not the fold models: provenance must not wait for training (`snakemake prepare
    results/provenance.json`)."""
    inputs = {"qc": path("qc_records"), "sample_sheet": SAMPLE_SHEET, "masks": list(LESION_MASKS.values())}
    inputs["lung_weights"] = list(LUNG_WEIGHTS.values())
    if SLICE_LABELS:
        inputs["slice_labels"] = SLICE_LABELS
    if MODE == "predict":
        inputs["models"] = list(REPORT_MODELS.values())
    return inputs


def patient_report_inputs(wildcards) -> dict:
    """What one patient's report shows: its QC record (in the QC folder) and lung montage, and,
    once it was classified and mapped, its prediction, key slices and lesion candidates."""
    patient = wildcards.patient
    inputs = {"qc": path("qc_records"), "provenance": path("provenance")}
    if ingest_ok(patient):
        inputs["montage"] = path("lung_montage", patient=patient)
        if lungs_ok(patient):
            inputs |= {
                "predictions": path("predictions"),
                "key_slices": path("key_slices", patient=patient),
                "lesions": path("lesions", patient=patient),
                "burden": path("burden", patient=patient),
                "models": path("models"),
            }
    return inputs


def summary_inputs(wildcards) -> dict:
    """Every patient's report and QC record, the cohort outputs, and the figures."""
    return {
        "reports": expand(path("report"), patient=PATIENTS),
        "qc": path("qc_records"),
        "burdens": [path("burden", patient=p) for p in mapped_patients()],
        "predictions": path("predictions"),
        "metrics": path("metrics"),
        "provenance": path("provenance"),
        "figures": list(CLASSIFICATION_FIGURES.values()) if LABELLED else [],
        "curves": [path("curves_png", model=f"fold{f}") for f in FOLDS] if MODE == "train" else [],
    }


def report_site_inputs(wildcards) -> dict:
    """The summary and every patient's report, requested once the status tables exist (as the
    summary's), so that a fresh plan holds no report job before the checkpoints."""
    return {"summary": path("summary"), "reports": summary_inputs(wildcards)["reports"]}
