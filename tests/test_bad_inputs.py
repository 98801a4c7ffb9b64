"""The bad-input corpus (tests/bad_inputs.py) through `snakemake prepare`: every case gets its
expected outcome, nothing identifying reaches the outputs or logs, and the inputs are unchanged."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from lungcam.core.records import read_record
from lungcam.ingest.leak_scan import find_leaks

from .bad_inputs import PLANTED, build_corpus, sheet_errors, write_sheet
from .conftest import NO_PRIOR, snakemake, tree_digest


@pytest.fixture(scope="module")
def corpus_run(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    cases = build_corpus(data, root / "inputs")
    sheet = write_sheet(cases, root / "inputs" / "patients.tsv")
    before = {c.patient_id: tree_digest(c.folder) for c in cases}
    work = root / "run"
    snakemake(work, "prepare", "results/provenance.json", "--config", f"samples={sheet}", NO_PRIOR)
    after = {c.patient_id: tree_digest(c.folder) for c in cases}
    return work, cases, before, after


@pytest.mark.slow
def test_every_bad_input_gets_its_outcome(corpus_run):
    work, cases, _, _ = corpus_run
    cohort = pd.read_csv(work / "results" / "cohort_qc.tsv", sep="\t", keep_default_na=False).set_index("patient_id")
    assert sorted(cohort.index) == sorted(c.patient_id for c in cases)  # every id kept, none altered
    for case in cases:
        qc = read_record(work / "results" / "qc" / f"{case.patient_id}.json")
        assert qc["patient_id"] == case.patient_id
        assert qc["status"] == case.status, (case.patient_id, qc["reasons"])
        if case.status == "excluded":
            assert qc["reasons"][0].startswith(f"ingest: {case.reason}"), (case.patient_id, qc["reasons"])
            assert cohort.loc[case.patient_id, "reasons"].startswith(f"ingest: {case.reason}")
        else:
            assert qc["stages"] == {"ingest": "ok", "lungs": "ok"}, (case.patient_id, qc["reasons"])
            assert (work / "work" / "cache" / case.patient_id / "image.npy").is_file()
        for text in case.warnings:
            assert any(text in w for w in qc["warnings"]), (case.patient_id, text, qc["warnings"])
    hashed = read_record(work / "results" / "qc" / "hash.json")
    assert hashed["ingest"]["header"]["images"] == 40  # scan#2, not its neighbour scan (30 CAP slices)
    pseudo = read_record(work / "results" / "qc" / "pseudo-0042.json")
    assert "[removed" not in json.dumps(pseudo) and (work / "results" / "lungs" / "pseudo-0042.nii.gz").is_file()
    statuses = (work / "work" / "status" / "ingest.tsv").read_text()
    assert "pseudo-0042\tok" in statuses and "[removed" not in statuses


@pytest.mark.slow
def test_the_corpus_leaves_no_identifier_in_outputs_or_logs(corpus_run):
    work, cases, _, _ = corpus_run
    planted = [value for value in PLANTED.values()] + [part for value in PLANTED.values() for part in value.split("^")]
    planted += ["98C14734-ASSH", "98C1066-ASAD"]  # the real series' own PatientIDs
    for folder in ("results", "logs", "work"):
        assert find_leaks(work / folder, planted) == [], folder
    provenance = json.loads((work / "results" / "provenance.json").read_text())
    assert sorted(provenance["inputs"]["patients"]) == sorted(c.patient_id for c in cases)  # read past the comment line


@pytest.mark.slow
def test_the_corpus_inputs_are_unchanged(corpus_run):
    _, _, before, after = corpus_run
    assert before == after


@pytest.mark.parametrize("name", ["same folder", "same scan", "inside outputs"])
def test_a_sheet_error_stops_the_run_before_any_job(data, tmp_path, name):
    workdir = tmp_path / "run"
    text, messages = sheet_errors(data, tmp_path / "inputs", workdir)[name]
    sheet = tmp_path / "patients.tsv"
    sheet.write_text(text)
    result = snakemake(workdir, "--config", f"samples={sheet}", "-n", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    for message in messages:
        assert message in output, output[-3000:]
    assert not (workdir / "results").exists() and not (workdir / "logs").exists()
