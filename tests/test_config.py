"""Configuration and sample sheet: validated before any job starts, errors name the row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lungcam.core.config import ConfigError, apply_demo_overrides, load_config, load_schema, record_validator, validate_config
from lungcam.core.samplesheet import SampleSheetError, lesion_masks, load_sample_sheet, row_checker

from .conftest import REPO

CLASSES = ["COVID-19", "CAP", "NP"]


def defaults_of(schema: dict) -> dict:
    """The default values a schema declares, nested like the config."""
    out = {}
    for key, sub in schema.get("properties", {}).items():
        if "properties" in sub:
            out[key] = defaults_of(sub)
        elif "default" in sub:
            out[key] = sub["default"]
    return out


def test_config_yaml_repeats_the_schema_defaults():
    with open(REPO / "config.yaml") as handle:
        documented = yaml.safe_load(handle)
    assert documented == defaults_of(load_schema("config.schema.yaml"))


def test_every_schema_key_has_a_description():
    def walk(schema, where):
        for key, sub in schema.get("properties", {}).items():
            assert sub.get("description"), f"{where}{key}"
            walk(sub, f"{where}{key}.")

    walk(load_schema("config.schema.yaml"), "")
    walk(load_schema("samples.schema.yaml"), "")


def test_empty_config_gets_all_defaults():
    config = load_config()
    assert config["ingest"]["series"]["rank_by"] == ["most_slices", "thinnest"]
    assert config["demo"]["patients_per_class"] == 12


def test_demo_overrides_can_be_switched_off():
    """`--config 'demo={"overrides": false}'` trains the demo with the train and cache sections as
    they are (full compute). Emptying demo.train on the command line would not: Snakemake
    merges nested values into the config, so an empty dict changes nothing."""
    demo = apply_demo_overrides(load_config())
    assert demo["train"]["input_size"] == 64 and demo["train"]["threads"] == 1 and demo["cache"]["spacing_mm"] == [5.0, 2.0, 2.0]
    full = apply_demo_overrides(load_config(overrides={"demo": {"overrides": "false"}}))  # as the command line gives it
    assert full["train"]["input_size"] == 224 and full["train"]["max_epochs"] == 50 and full["cache"]["spacing_mm"] == [2.5, 1.25, 1.25]
    assert full["demo"]["train"]["input_size"] == 64  # still there, unused


COMPUTE_KEYS = {
    "train": {"input_size", "width", "max_epochs", "batch_size", "bag_size", "bags_per_step", "workers", "threads", "device", "gpus"},
    "cache": {"spacing_mm", "margin_mm"},
}


def test_demo_and_defaults_are_one_recipe():
    """The demo differs from the defaults only in what compute forces: every other train and
    cache choice (aggregation, validation, weight average, dropout, learning rate, masking, map
    smoothing) is the same, and a demo.train key outside the compute keys is a config error."""
    demo, full = apply_demo_overrides(load_config()), apply_demo_overrides(load_config(overrides={"demo": {"overrides": False}}))
    for section, compute in COMPUTE_KEYS.items():
        differing = {key for key in full[section] if demo[section][key] != full[section][key]}
        assert differing and differing <= compute, section
    assert demo["cam"] == full["cam"]
    with pytest.raises(ConfigError, match="dropout"):
        load_config(overrides={"demo": {"train": {"dropout": 0.5}}})
    with pytest.raises(ConfigError, match="mask_outside_lungs"):
        load_config(overrides={"demo": {"cache": {"mask_outside_lungs": False}}})


def test_text_from_nested_command_line_values_becomes_numbers():
    """`--config 'train={"folds": 3}'` reaches the workflow as {"folds": "3"} (Snakemake's parser)."""
    config = validate_config({"train": {"folds": "3", "amp": "false", "learning_rate": "1e-3"}, "cache": {"spacing_mm": ["5", "2", "2.5"]}})
    assert config["train"]["folds"] == 3 and config["train"]["amp"] is False and config["train"]["learning_rate"] == 0.001
    assert config["cache"]["spacing_mm"] == [5.0, 2.0, 2.5]
    with pytest.raises(ConfigError, match="train.folds: 'three' is not of type 'integer'"):
        validate_config({"train": {"folds": "three"}})


def test_bad_config_names_the_key():
    with pytest.raises(ConfigError, match=r"ingest\.min_slices: 0 is less than the minimum of 1"):
        validate_config({"ingest": {"min_slices": 0}})
    with pytest.raises(ConfigError, match="Additional properties are not allowed"):
        validate_config({"ingets": {}})


def write_sheet(folder: Path, rows: list[str]) -> Path:
    (folder / "p1").mkdir(exist_ok=True)
    (folder / "p2").mkdir(exist_ok=True)
    sheet = folder / "patients.tsv"
    sheet.write_text("\n".join(["patient_id\tlabel\tdicom_dir"] + rows) + "\n")
    return sheet


def test_good_sheet_resolves_paths_relative_to_the_sheet(tmp_path):
    sheet = write_sheet(tmp_path, ["P1\tCOVID-19\tp1", "P2\tNP\tp2"])
    table = load_sample_sheet(sheet, CLASSES)
    assert list(table.index) == ["P1", "P2"]
    assert table.loc["P1", "dicom_dir"] == str(tmp_path / "p1")


def test_lesion_masks_of_the_patients_that_have_one(tmp_path):
    (tmp_path / "p1").mkdir()
    (tmp_path / "p2").mkdir()
    (tmp_path / "m1.nii.gz").write_bytes(b"")
    sheet = tmp_path / "patients.tsv"
    sheet.write_text("patient_id\tlabel\tdicom_dir\tlesion_mask\nP1\tCAP\tp1\tm1.nii.gz\nP2\tNP\tp2\t\n")
    assert lesion_masks(load_sample_sheet(sheet, CLASSES)) == {"P1": str(tmp_path / "m1.nii.gz")}
    assert lesion_masks(load_sample_sheet(write_sheet(tmp_path, ["P1\tNP\tp1"]), CLASSES)) == {}


@pytest.mark.parametrize(
    "rows, message",
    [
        (["P1\tFLU\tp1"], "line 2 (patient_id 'P1'): unknown label 'FLU'; allowed: COVID-19, CAP, NP"),
        (["P1\tNP\tp1", "P1\tCAP\tp2"], "line 3 (patient_id 'P1'): duplicate patient_id, first used on line 2"),
        (["../x\tNP\tp1"], "line 2 (patient_id '../x'): patient_id: '../x' does not match"),
        (["P1\tNP\tmissing"], "line 2 (patient_id 'P1'): dicom_dir 'missing' is not an existing folder"),
        (["P1\t\tp1"], "line 2 (patient_id 'P1'): empty label"),
    ],
)
def test_bad_rows_are_named(tmp_path, rows, message):
    with pytest.raises(SampleSheetError) as error:
        load_sample_sheet(write_sheet(tmp_path, rows), CLASSES)
    assert message in str(error.value)


@pytest.mark.parametrize(
    "row, good",
    [
        ({"patient_id": "P1", "dicom_dir": "d"}, True),
        ({"patient_id": "P_1-a", "label": "NP", "dicom_dir": "d", "lesion_mask": "m.nii.gz", "site": "A"}, True),
        ({"patient_id": "P" * 64, "dicom_dir": "d"}, True),
        ({"patient_id": "../x", "dicom_dir": "d"}, False),
        ({"patient_id": "P 1", "dicom_dir": "d"}, False),
        ({"patient_id": "ü", "dicom_dir": "d"}, False),
        ({"patient_id": "P" * 65, "dicom_dir": "d"}, False),
        ({"patient_id": "P1"}, False),
        ({"dicom_dir": "d"}, False),
        ({"patient_id": "P1", "dicom_dir": ""}, False),
        ({"patient_id": "P1", "dicom_dir": "d", "name": "Doe"}, False),
    ],
)
def test_the_compiled_row_check_agrees_with_jsonschema(row, good):
    """Good rows pass the compiled check alone: it must reject exactly what jsonschema rejects."""
    found = row_checker()(dict(row))
    assert found == record_validator(load_schema("samples.schema.yaml"), fill_defaults=False)(dict(row))
    assert (found == []) == good


def test_all_problems_are_reported_at_once(tmp_path):
    with pytest.raises(SampleSheetError, match="has 2 problem"):
        load_sample_sheet(write_sheet(tmp_path, ["P1\tFLU\tp1", "P2\tNP\tnope"]), CLASSES)


def test_unknown_and_missing_columns(tmp_path):
    sheet = tmp_path / "s.tsv"
    sheet.write_text("patient_id\tlabel\tdicom_dir\tname\nP1\tNP\t.\tDoe\n")
    with pytest.raises(SampleSheetError, match="unknown column"):
        load_sample_sheet(sheet, CLASSES)
    sheet.write_text("patient_id\tlabel\nP1\tNP\n")
    with pytest.raises(SampleSheetError, match="missing column"):
        load_sample_sheet(sheet, CLASSES)


def test_only_whole_lines_starting_with_a_hash_are_comments(tmp_path):
    """A `#` inside a value is part of it: `scan#2` must not be cut to `scan`, another folder."""
    (tmp_path / "scan").mkdir()
    (tmp_path / "scan#2").mkdir()
    sheet = tmp_path / "patients.tsv"
    sheet.write_text("# cohort of 2026, relabelled\npatient_id\tlabel\tdicom_dir\n# a comment between rows\nP1\tNP\tscan#2\n")
    table = load_sample_sheet(sheet, CLASSES)
    assert table.loc["P1", "dicom_dir"] == str(tmp_path / "scan#2")
    sheet.write_text("patient_id\tlabel\tdicom_dir\n#P0\tNP\tscan\nP1\tFLU\tscan#2\n")
    with pytest.raises(SampleSheetError, match=r"line 3 \(patient_id 'P1'\): unknown label 'FLU'"):  # numbered as in the file
        load_sample_sheet(sheet, CLASSES)


def test_provenance_reads_a_sheet_that_starts_with_a_comment(tmp_path):
    """Every stage reads the sheet with the one reader: provenance too (it used to fail with
    KeyError: patient_id on a leading comment line)."""
    from lungcam.report.provenance import provenance_document

    (tmp_path / "scan#2").mkdir()
    sheet = tmp_path / "patients.tsv"
    sheet.write_text("# exported 2026-11-30\npatient_id\tlabel\tdicom_dir\nP1\tNP\tscan#2\n")
    qc = [{"patient_id": "P1", "status": "ok", "ingest": {"files": {"found": 3, "sha256": "abc"}}}]
    document = provenance_document(load_config(), qc, sheet, {})
    assert document["inputs"]["patients"]["P1"] == {"dicom_dir": "scan#2", "files": 3, "sha256": "abc", "status": "ok"}
    assert "lung_weights" not in document["inputs"]  # lungmask's or the prior's, only when used


def test_one_folder_under_two_patient_ids_is_refused(tmp_path):
    (tmp_path / "p1" / "inner").mkdir(parents=True)
    (tmp_path / "p3").symlink_to(tmp_path / "p1")
    sheet = write_sheet(tmp_path, ["P1\tNP\tp1", "P2\tCAP\tp2", "P3\tCOVID-19\tp3", "P4\tNP\tp1/inner"])
    with pytest.raises(SampleSheetError, match="has 2 problem") as error:
        load_sample_sheet(sheet, CLASSES)
    assert "line 4 (patient_id 'P3'): dicom_dir is also patient 'P1''s DICOM folder" in str(error.value)
    assert "line 5 (patient_id 'P4'): dicom_dir lies inside patient 'P1''s DICOM folder" in str(error.value)


def test_inputs_inside_the_run_outputs_are_refused(tmp_path):
    """Snakemake deletes the outputs it reruns: a DICOM folder below results/ or work/ could be
    deleted with them."""
    (tmp_path / "work" / "ingest" / "P1").mkdir(parents=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "mask.nii.gz").write_bytes(b"")
    (tmp_path / "p2").mkdir()
    sheet = tmp_path / "patients.tsv"
    sheet.write_text("patient_id\tlabel\tdicom_dir\tlesion_mask\nP1\tNP\twork/ingest/P1\t\nP2\tNP\tp2\tresults/mask.nii.gz\n")
    outputs = [tmp_path / "results", tmp_path / "work", tmp_path / "logs"]
    with pytest.raises(SampleSheetError, match="has 2 problem") as error:
        load_sample_sheet(sheet, CLASSES, output_dirs=outputs)
    message = str(error.value)
    assert "line 2 (patient_id 'P1'): dicom_dir 'work/ingest/P1' overlaps the run's output folder work/" in message
    assert "line 3 (patient_id 'P2'): lesion_mask 'results/mask.nii.gz' is inside the run's output folders" in message
    sheet.write_text("patient_id\tlabel\tdicom_dir\nP3\tNP\t.\n")  # a folder holding the outputs
    with pytest.raises(SampleSheetError, match="line 2 \\(patient_id 'P3'\\): dicom_dir '.' overlaps the run's output folder results/"):
        load_sample_sheet(sheet, CLASSES, output_dirs=outputs)


def test_one_scan_in_two_folders_is_found_by_its_uids(tmp_path, data):
    """The same study copied into two folders under two ids, found from one header per folder;
    the cache holds digests, never the UIDs."""
    import shutil

    import pydicom

    from lungcam.ingest.scan_index import shared_scan_problems

    source = sorted((data / "covid-ct-md" / "P001").iterdir())[:3]
    folders = {}
    for patient in ("A", "B"):
        folders[patient] = tmp_path / patient
        folders[patient].mkdir()
        for path in source:
            shutil.copy(path, folders[patient])
    folders["C"] = data / "covid-ct-md" / "cap001"
    cache = tmp_path / "work" / "scan_index.json"
    problems = shared_scan_problems(folders, cache)
    assert problems == [
        "patients 'A', 'B' hold the same scan (same StudyInstanceUID or SeriesInstanceUID in their "
        "DICOM folders); one scan must belong to one patient"
    ]
    uid = str(pydicom.dcmread(source[0], stop_before_pixels=True).StudyInstanceUID)
    assert uid not in cache.read_text() and len(json.loads(cache.read_text())) == 3
    assert shared_scan_problems(folders, cache) == problems  # from the cache
    assert shared_scan_problems({"A": folders["A"], "C": folders["C"]}, cache) == []


def test_example_sample_sheet_names_the_real_scans():
    """examples/patients.tsv is a valid sheet whose folders are the real scans beside the checkout."""
    sheet = load_sample_sheet(REPO / "examples" / "patients.tsv", ["COVID-19", "CAP", "NP"])
    assert list(sheet["label"]) == ["COVID-19", "CAP", "NP"]
    for folder in sheet["dicom_dir"]:
        assert any(Path(folder).iterdir()), folder


def test_settings_are_built_from_the_schema_defaults():
    """One way from a validated section to a settings object, with the field types converted
    (YAML gives lists and ints): nested settings, unions by the value's shape, tuples, sets."""
    from lungcam.core.config import default_settings
    from lungcam.ingest.stage import IngestSettings
    from lungcam.lungs.stage import LungSettings
    from lungcam.train.cache import CacheSettings
    from lungcam.train.training import TrainSettings

    cache = default_settings(CacheSettings, "cache")
    assert cache.spacing_mm == (2.5, 1.25, 1.25) and isinstance(cache.window_hu, tuple)
    lungs = default_settings(LungSettings, "lungs")
    assert lungs.threshold.lung_hu == -300.0 and lungs.qc.left_right_ratio.warn == (0.65, 1.2) and lungs.qc.base_gas_ml.warn == 10.0
    ingest = IngestSettings.from_config(validate_config({"ingest": {"excluded_body_parts": ["head"]}})["ingest"])
    assert ingest.excluded_body_parts == frozenset({"HEAD"}) and ingest.series.rank_by == ("most_slices", "thinnest")
    train = TrainSettings.from_config(validate_config({"train": {"ema_epochs": 8}})["train"])
    assert isinstance(train.ema_epochs, float) and train.ema_epochs == 8.0
