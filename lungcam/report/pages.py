"""Per-patient audit reports and the cohort summary, as self-contained HTML.

Modelled on fMRIPrep's subject reports (summary, figures, About, Errors) and MRIQC's group
report (QC measures as strip plots whose points open the subject's report). Every image is
embedded as a data URI and the pages carry their own CSS and the few lines of script that sort
the cohort table, so a report opens offline, copied anywhere, as a single file. Identity is the
pseudonymous patient_id only: the records these pages are made from were scrubbed at ingest.
"""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from lungcam.core.atomic import write_text
from lungcam.core.folds import NO_PNEUMONIA, target_class
from lungcam.core.map_sampling import evaluations_per_axis
from lungcam.core.montage import key_slices_shown

# QC measures of the summary's strip plots: column of the cohort table -> axis title.
QC_MEASURES = {
    "lung_volume_ml": "lung volume (mL)",
    "left_right_ratio": "left/right lung volume",
    "lung_z_extent_mm": "lungs' z extent (mm)",
    "slice_thickness_mm": "slice thickness (mm)",
    "noise_hu": "noise (HU, SD in air)",
    "burden_percent": "infection burden (% of lung)",
}
HEADER_FIELDS = {  # ingest header summary -> label in the report
    "manufacturer": "manufacturer",
    "model": "scanner model",
    "kernel": "reconstruction kernel",
    "slice_thickness_mm": "slice thickness (mm)",
    "slice_spacing_mm": "slice spacing (mm)",
    "pixel_spacing_mm": "pixel spacing (mm)",
    "slices": "slices",
    "kvp": "kVp",
    "tube_current_ma": "tube current (mA)",
    "patient_position": "patient position",
    "body_part": "body part",
    "gantry_tilt_deg": "gantry tilt (deg)",
}
LUNG_FIELDS = {
    "right_ml": "right lung (mL)",
    "left_ml": "left lung (mL)",
    "total_ml": "total (mL)",
    "left_right_ratio": "left/right ratio",
    "right_components": "right components",
    "left_components": "left components",
    "fov_edge_fraction": "fraction at the field-of-view edge",
    "base_offset_mm": "left base minus right base (mm)",
    "right_abrupt_end": "right: largest slice-to-slice area loss",
    "left_abrupt_end": "left: largest slice-to-slice area loss",
    "right_base_gas_ml": "right: gas in the base (mL)",
    "left_base_gas_ml": "left: gas in the base (mL)",
    "right_enclosed_tissue_ml": "right: tissue left out along the chest wall (mL)",
    "left_enclosed_tissue_ml": "left: tissue left out along the chest wall (mL)",
}


JPEG_QUALITY = 80  # CT pictures in the patient reports: a quarter of the PNG's bytes, no visible loss


def data_uri(path: Path | str | None, photo: bool = False) -> str | None:
    """A PNG as a data URI (None when there is no file); a `photo` (CT slices) re-encoded as
    JPEG, which keeps a patient report small."""
    if path is None or not Path(path).is_file():
        return None
    if not photo:
        return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")
    from PIL import Image

    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _environment() -> Environment:
    environment = Environment(
        loader=PackageLoader("lungcam.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["fmt"] = _number_text
    environment.filters["ci"] = _estimate_text
    return environment


def _number_text(value, digits: int = 3) -> str:
    """A figure for a table cell: floats rounded, missing values (None, NaN) empty."""
    if value is None or value != value:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _estimate_text(entry: dict | None, digits: int = 3) -> str:
    """`value [low, high]` of a metrics.json entry; `n/a` where the metric is undefined (a class
    absent), the value alone where no bootstrap draw defined it."""
    if entry is None:
        return ""
    value, (low, high) = entry["value"], entry["ci95"]
    if value is None or value != value:
        return "n/a"
    if low is None or high is None or low != low:
        return _number_text(float(value), digits)
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def run_times(benchmarks: Path | str, patient: str) -> list[dict]:
    """Wall time, CPU time and peak memory of each per-patient job, from Snakemake's benchmark
    files (`{benchmarks}/{rule}/{patient}.tsv`); rules that have not run are absent."""
    times = []
    for path in sorted(Path(benchmarks).glob(f"*/{patient}.tsv")):
        with open(path) as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows:
            row = rows[-1]
            times.append(
                {
                    "rule": path.parent.name,
                    "seconds": float(row["s"]),
                    "cpu_seconds": _number(row.get("cpu_time")),
                    "max_rss_mb": _number(row.get("max_rss")),
                }
            )
    return times


def _number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _is_true(value) -> bool:
    """A predictions.tsv flag, read back as a bool or as text."""
    return value is True or str(value).lower() == "true"


def patient_context(
    qc: dict,
    provenance: dict,
    *,
    label: str,
    prediction: dict | None,
    classes: list[str],
    lesions: pd.DataFrame | None = None,
    burden: dict | None = None,
    key_slices: Path | None = None,
    lung_montage: Path | None = None,
    times: list[dict] | None = None,
    map_target: str = "predicted",
    models: dict | None = None,
    summary_link: str = "../summary.html",
) -> dict:
    """Everything the patient report shows, from its QC record and the run's provenance.
    `label` is the sample sheet's; `prediction` the patient's predictions.tsv row (None when the
    patient was excluded before classification); `map_target` is config cam.target (which
    class the map shows); `models` (work/models.json) describes the model of each fold; the
    rest are shown where given."""
    ingest, lungs = qc.get("ingest", {}), qc.get("lungs", {})
    header = ingest.get("header", {})
    errors = [f"{reason}" for reason in qc.get("reasons", [])]
    if qc.get("status") == "ok" and prediction is None:
        errors.append("no prediction for this patient (not in predictions.tsv)")
    probabilities = [{"class": c, "probability": float(prediction[f"prob_{c}"])} for c in classes] if prediction else []
    warnings = list(qc.get("warnings", []))
    if prediction and _is_true(prediction.get("trained_on")):
        warnings.insert(
            0, "the model file lists this patient among those it was trained on: its prediction and map are not an independent test"
        )
    burden_note = None
    if burden and prediction and prediction.get("predicted") == NO_PNEUMONIA:
        burden, lesions, burden_note = (
            None,
            None,
            f"Predicted {NO_PNEUMONIA}: no infection burden or lesion candidates are given for a scan judged free of pneumonia.",
        )
    return {
        "patient_id": qc["patient_id"],
        "status": qc.get("status", "unknown"),
        "stages": [f"{stage} {state}" for stage, state in qc.get("stages", {}).items()],
        "label": label,
        "prediction": prediction,
        "probabilities": probabilities,
        "key_slices": data_uri(key_slices, photo=True),
        "key_slices_shown": key_slices_shown(key_slices) if key_slices and Path(key_slices).is_file() else None,
        "lung_montage": data_uri(lung_montage, photo=True),
        "lesions": lesions.to_dict("records") if lesions is not None else [],
        "burden": burden,
        "burden_note": burden_note,
        "series": ingest.get("series", {}),
        "header": [(label, header[key]) for key, label in HEADER_FIELDS.items() if key in header],
        "noise_hu": ingest.get("hu", {}).get("noise_hu"),
        "lungs": [(label, lungs[key]) for key, label in LUNG_FIELDS.items() if key in lungs],
        "lung_method": lungs.get("method"),
        "warnings": warnings,
        "errors": errors,
        "map_class": target_class(prediction, classes, map_target) if prediction else None,
        "provenance": {
            "code": provenance["code"],
            "config_hash": provenance["config_hash"],
            "run": provenance.get("run", {}),
            "model": (models or {}).get(str(prediction["fold"])) if prediction else None,
            "lungcam": provenance["software"].get("lungcam"),
        },
        "times": times or [],
        "summary_link": summary_link,
    }


def render(template: str, context: dict, path: Path | str) -> None:
    """Render one of lungcam/templates/ to `path`."""
    write_text(path, _environment().get_template(template).render(**context))


def qc_table(
    qc_records: list[dict], predictions: pd.DataFrame | None, burdens: dict[str, dict], labels: dict[str, str], sites: dict[str, str]
) -> pd.DataFrame:
    """One row per patient of the cohort: status, label, prediction and the QC measures of the
    strip plots (QC_MEASURES)."""
    rows = []
    indexed = predictions.set_index("patient_id") if predictions is not None else None
    for qc in qc_records:
        patient = qc["patient_id"]
        ingest, lungs = qc.get("ingest", {}), qc.get("lungs", {})
        row = {
            "patient_id": patient,
            "label": labels.get(patient, ""),
            "site": sites.get(patient, ""),
            "status": qc.get("status", "unknown"),
            "stage": _failed_stage(qc.get("stages", {})),
            "reasons": "; ".join(qc.get("reasons", [])),
            "lung_warnings": "; ".join(w.removeprefix("lungs: ") for w in qc.get("warnings", []) if w.startswith("lungs: ")),
            "lung_volume_ml": lungs.get("total_ml"),
            "left_right_ratio": lungs.get("left_right_ratio"),
            "lung_z_extent_mm": max((lungs.get(f"{side}_z_extent_mm") or 0.0 for side in ("right", "left")), default=0.0) or None,
            "slice_thickness_mm": ingest.get("header", {}).get("slice_thickness_mm"),
            "noise_hu": ingest.get("hu", {}).get("noise_hu"),
            "burden_percent": burdens.get(patient, {}).get("total_percent"),
            "lesions": burdens.get(patient, {}).get("candidates"),
        }
        if indexed is not None and patient in indexed.index:
            found = indexed.loc[patient]
            row |= {
                "predicted": found["predicted"],
                "confidence": float(found[f"prob_{found['predicted']}"]),
                "fold": str(found["fold"]),
                "trained_on": _is_true(found.get("trained_on")),
            }
            if found["predicted"] == NO_PNEUMONIA:
                row["burden_percent"] = row["lesions"] = None
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("predicted", "confidence", "fold", *QC_MEASURES):
        if column not in table:
            table[column] = None
    return table


OUTLIER_Z = 3.0  # robust z (median and MAD of the patient's class) beyond which a QC measure is flagged
MIN_GROUP = 5  # fewer patients in a class: no outliers flagged there


def qc_outliers(table: pd.DataFrame, measures: dict[str, str]) -> list[dict]:
    """Patients whose QC measure lies more than OUTLIER_Z robust standard deviations (1.4826 x
    the median absolute deviation) from the median of their class, one item per patient and
    measure: patient_id, measure (its title), value, median."""
    found = []
    for _, group in table.groupby(table["label"].replace("", "unlabelled")):
        for measure, title in measures.items():
            if measure not in group:
                continue
            values = pd.to_numeric(group[measure], errors="coerce").dropna()
            if len(values) < MIN_GROUP:
                continue
            median = float(values.median())
            spread = 1.4826 * float((values - median).abs().median())
            if spread == 0:
                continue
            for index, value in values.items():
                if abs(value - median) / spread > OUTLIER_Z:
                    found.append({"patient_id": group.loc[index, "patient_id"], "measure": title, "value": float(value), "median": median})
    return sorted(found, key=lambda item: (item["patient_id"], item["measure"]))


def _failed_stage(stages: dict[str, str]) -> str:
    """The stage that excluded a patient (the first not `ok`), or empty."""
    return next((stage for stage, state in stages.items() if state != "ok"), "")


def _kept_model_text(train: dict) -> str:
    """Which weights the classifier kept, in words."""
    weights = (
        f"an exponential moving average of the weights over about {train['ema_epochs']:g} epochs"
        if train["ema_epochs"] > 0
        else "the weights"
    )
    if train["validation_fraction"] > 0:
        return (
            f"{weights} of the epoch with the lowest loss on {train['validation_fraction']:.0%} of the training patients held out were "
            "kept "
            f"(at most {train['max_epochs']} epochs, stopping after {train['patience']} without improvement)"
        )
    return f"every training patient trained for {train['max_epochs']} epochs, and {weights} of the last were kept"


def _lesion_threshold_text(lesions: dict) -> str:
    """The lesion threshold of the config section cam.lesions, in words."""
    if lesions["threshold"] == "absolute":
        return f"a map value of {lesions['absolute']:g}, fixed before evaluation and the same for every scan"
    if lesions["threshold"] == "otsu":
        return "Otsu's threshold of each scan's map (which flags part of every scan)"
    return f"{lesions['relative']:g} of each scan's map maximum (which flags part of every scan)"


def methods_paragraph(config: dict, classes: list[str], patients: int, excluded: int) -> str:
    """A methods paragraph generated from the resolved config, citing the methods used."""
    train, cam, lungs, cache = config["train"], config["cam"], config["lungs"], config["cache"]
    lung_text = (
        "lungmask (Hofmanninger et al., Eur Radiol Exp 2020), model " + lungs["lungmask"]["model"]
        if lungs["method"] == "lungmask"
        else "a classical threshold method (air threshold, border and airway removal, hole filling and pleural consolidation recovery)"
        + (
            ", completed by a learned lung prior (a 2D U-Net trained on synthetic phantoms with known lungs and lesions)"
            if lungs["prior"]["use"]
            else ""
        )
        + (
            f", with a {lungs['lesion_margin']['margin_mm']:g} mm margin into soft tissue around consolidation at the mask's edge"
            if lungs["lesion_margin"]["margin_mm"] > 0
            else ""
        )
    )
    aggregation = {
        "presence": f"the {train['top_k']} most lesion-like slices for pneumonia "
        f"and the {train['top_k']} highest per lesion class for its kind",
        "topk_mean": f"the mean of the {train['top_k']} highest per class",
        "mean": "their mean over all slices",
        "max": "their maximum over all slices",
    }[train["aggregation"]]
    model_text = (
        "the multi-scale weakly supervised network of Hu et al. (IEEE Access 2020), every slice inheriting its patient's label, "
        f"slice probabilities aggregated per patient by {aggregation}"
        if train["model"] == "hu2020"
        else "the multi-scale network of Hu et al. (IEEE Access 2020) with gated attention pooling over each patient's slices "
        "(Ilse et al., ICML 2018), trained with the patient label only"
    )
    cam_text = {
        "lungcam_mean": "lungcam's mean of the network's three class activation maps "
        "(pool3, pool4 and pool5 of Hu et al.'s network, upsampled and averaged; not the paper's own map)",
        "pool3": "the finest of the paper's class activation maps (pool3, upsampled)",
        "pool4": "the paper's middle-scale class activation map (pool4, upsampled)",
        "pool5": "the paper's coarsest class activation map (pool5, upsampled)",
        "joint_saliency": "the paper's joint saliency (the product of the three scales' Integrated Gradients maps)",
        "gradcam": "Grad-CAM (Selvaraju et al., ICCV 2017)",
        "gradcampp": "Grad-CAM++ (Chattopadhay et al., WACV 2018)",
        "layercam": "LayerCAM (Jiang et al., IEEE TIP 2021)",
        "integrated_gradients": "Integrated Gradients (Sundararajan et al., ICML 2017)",
    }[cam["method"]]
    shifts = evaluations_per_axis(cam["method"], cam["shifts"])
    if shifts > 1:
        cam_text += (
            f", evaluated densely (the input shifted to {shifts} x {shifts} offsets within a pool3 cell "
            "and the maps averaged back in place)"
        )
    smoothing = f", there smoothed within the lungs (Gaussian, sigma {cam['smooth_mm']:g} mm)" if cam["smooth_mm"] else ""
    evaluation = (
        f"Patients were split into {train['folds']} stratified folds (no patient in two folds); every patient was classified by the "
        "model that did not train on it."
        if config["mode"] == "train"
        else "A trained model was applied to this cohort (prediction mode)."
    )
    return (
        f"{patients} chest CT scans were converted from DICOM with dcm2niix, choosing one series per patient; {excluded} were excluded "
        "by quality control. "
        f"Lungs were segmented with {lung_text}. Scans were resampled to {cache['spacing_mm']} mm"
        f"{' (each voxel averaging its extent)' if cache['antialias'] else ''}, cropped to the lungs and windowed to "
        f"[{cache['window_hu'][0]}, {cache['window_hu'][1]}] HU; lung slices were resized to {train['input_size']} px. "
        f"The classifier ({', '.join(classes)}) is {model_text}, trained with a class-weighted focal cross-entropy and Adam (learning "
        f"rate {train['learning_rate']}); "
        f"{_kept_model_text(train)}. "
        f"{evaluation} Infection maps are {cam_text}, restricted to the lungs and mapped back onto each scan{smoothing}; lesion "
        "candidates are connected components above "
        f"{_lesion_threshold_text(cam['lesions'])}. "
        "Confidence intervals are 95% percentile bootstrap intervals over patients."
    )


SUMMARY_COLUMNS = [
    ("patient", "text"),
    ("label", "text"),
    ("site", "text"),
    ("status", "text"),
    ("predicted", "text"),
    ("confidence", "number"),
    ("fold", "text"),
    ("lung volume (mL)", "number"),
    ("slice thickness (mm)", "number"),
    ("noise (HU)", "number"),
    ("burden (%)", "number"),
    ("lesions", "number"),
    ("auditor's rating", "text"),
]


MIN_CI_PATIENTS = 10  # fewer patients in a fold or site: no figures with confidence intervals


def verdict(table: pd.DataFrame, metrics: dict, classes: list[str]) -> list[dict]:
    """What an auditor must know before the tables, as (level, text) items, worst first:
    patients a stage failed on or excluded, metrics no better than chance, maps that never
    point at a lesion, classes never predicted, lung masks with warnings."""
    items = []
    failed = table[table["reasons"].str.contains("unexpected error", na=False)]
    for stage, group in failed.groupby("stage"):
        items.append(("error", f"{stage} failed with an unexpected error for {len(group)} patient(s): see their reports"))
    excluded = table[(table["status"] != "ok") & ~table.index.isin(failed.index)]
    for stage, group in excluded.groupby("stage"):
        items.append(("warning", f"{stage} excluded {len(group)} patient(s), each with its reason below"))
    overall = (metrics.get("classification") or {}).get("overall", {})
    classified = table[table["predicted"].notna()]
    labelled = classified["label"][classified["label"].isin(classes)]
    chance = float(labelled.value_counts(normalize=True).max()) if len(labelled) else None
    accuracy, auc = overall.get("accuracy", {}), overall.get("macro_roc_auc", {})
    if chance is not None and accuracy.get("ci95") and accuracy["ci95"][0] <= chance:
        items.append(
            ("error", f"accuracy {accuracy['value']:.3f} is not above chance ({chance:.3f}, the largest class): its 95% CI reaches it")
        )
    if auc.get("ci95") and auc["ci95"][0] <= 0.5:
        items.append(("error", f"macro ROC AUC {auc['value']:.3f} is not above chance (0.5): its 95% CI reaches it"))
    pointing = (metrics.get("localisation") or {}).get("pointing_game", {})
    if pointing.get("n") and pointing.get("mean") == 0:
        items.append(("error", f"the maps' peak lies in a lesion for none of {pointing['n']} patients with lesion masks (pointing game 0)"))
    predicted = set(table["predicted"].dropna())
    if predicted:
        for name in classes:
            if name not in predicted:
                items.append(("warning", f"no patient was predicted {name}"))
    warned = int((table["lung_warnings"].fillna("") != "").sum())
    if warned:
        items.append(("warning", f"{warned} patient(s) have lung mask warnings: check their lung QC pictures"))
    return [{"level": level, "text": text} for level, text in sorted(items, key=lambda item: item[0] != "error")]


def summary_context(
    table: pd.DataFrame,
    metrics: dict,
    provenance: dict,
    config: dict,
    classes: list[str],
    figures: list[tuple[str, Path]],
    qc_strip: str,
    report_link: str = "reports/{}.html",
) -> dict:
    """Everything the cohort summary shows; `table` is `qc_table`'s, `figures` (title, PNG)."""
    records = table.astype(object).where(table.notna(), None).to_dict("records")
    for row in records:
        row["link"] = report_link.format(row["patient_id"])
    counts = table["label"].replace("", "unlabelled").value_counts()
    return {
        "patients": records,
        "exclusions": [row for row in records if row["status"] != "ok"],
        "lung_warnings": [row for row in records if row["status"] == "ok" and row.get("lung_warnings")],
        "trained_on": [row for row in records if row.get("trained_on")],
        "counts": [f"{count} {name}" for name, count in counts.items()],
        "columns": SUMMARY_COLUMNS,
        "metrics": metrics,
        "figures": [(title, data_uri(path)) for title, path in figures if Path(path).is_file()],
        "qc_strip": qc_strip,
        "methods": methods_paragraph(config, classes, len(table), int((table["status"] != "ok").sum())),
        "provenance": provenance,
        "mode": config["mode"],
        "classes": classes,
        "cam_method": config["cam"]["method"],
        "verdict": verdict(table, metrics, classes),
        "qc_outliers": [item | {"link": report_link.format(item["patient_id"])} for item in qc_outliers(table, QC_MEASURES)],
        "min_ci_patients": MIN_CI_PATIENTS,
    }


def link_site(summary: Path | str, reports: list[Path | str], site: Path | str) -> str:
    """Put the summary (as summary.html) and the patient reports (reports/) into folder `site`,
    where the summary's links to the reports resolve: hard links where the file system allows
    them (no copy of 5,000 reports), copies elsewhere. Returns how they were placed."""
    import os
    import shutil

    site = Path(site)
    (site / "reports").mkdir(parents=True, exist_ok=True)
    placed = set()
    for source, target in [(Path(summary), site / "summary.html")] + [(Path(r), site / "reports" / Path(r).name) for r in reports]:
        try:
            os.link(source, target)
            placed.add("linked")
        except OSError:
            shutil.copyfile(source, target)
            placed.add("copied")
    return " and ".join(sorted(placed))
