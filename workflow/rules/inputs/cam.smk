"""Which patients get a map, and what localisation reads."""

# The keys of section cam that change a map (not the lesion or localisation settings).
MAP_SETTINGS = ("target", "method", "ig_steps", "shifts", "smooth_mm")
CAM_GPUS = 1 if config["train"]["device"] != "cpu" else 0
# The models that map patients: the fold models (each maps the patients it held out), or predict.model.
CAM_MODELS = [path("model", model=f"fold{f}") for f in FOLDS] if MODE == "train" else [config["predict"]["model"]]
SLICE_LABELS = config["cam"]["slice_labels"]
SLICE_LABELLED = set(pd.read_csv(SLICE_LABELS, sep="\t", dtype=str)["patient_id"]) if SLICE_LABELS else set()


def mapped_patients() -> list[str]:
    """The patients that passed ingest and lung QC, so get a map (waits for the status checkpoints)."""
    return [p for p in PATIENTS if lungs_ok(p)]


def localised_patients() -> list[str]:
    """Mapped patients with a lesion mask or slice labels."""
    return [p for p in mapped_patients() if p in LESION_MASKS or p in SLICE_LABELLED]


def cam_targets(wildcards) -> list[str]:
    """A map and lesion candidates per mapped patient; localisation figures when any of them has
    a lesion mask or slice labels."""
    targets = [path(kind, patient=p) for p in mapped_patients() for kind in ("cam", "lesions")]
    if localised_patients():
        targets.append(path("localisation"))
    return targets


def localisation_inputs(wildcards) -> dict:
    """Map and lungs of every localised patient, their lesion masks, and the slice-label file."""
    patients = localised_patients()
    inputs = {
        "cams": [path("cam", patient=p) for p in patients],
        "lungs": [path("lungs", patient=p) for p in patients],
        "masks": [LESION_MASKS[p] for p in patients if p in LESION_MASKS],
    }
    if SLICE_LABELS:
        inputs["slice_labels"] = SLICE_LABELS
    return inputs
