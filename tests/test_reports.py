"""Reports: provenance checksums, the cohort table, Snakemake's report, and the HTML pages in a
real browser (headless Chromium through Selenium).

The browser test needs the Debian packages chromium and chromium-driver (`make browser`, which
.ci/run calls). Without them it is skipped, unless LUNGCAM_REQUIRE_BROWSER=1 (CI) makes that a
failure.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import pytest

from lungcam.core.config import load_config, load_schema
from lungcam.core.folders import folder_digest
from lungcam.ingest.leak_scan import find_leaks
from lungcam.report.figures import qc_strip_svg
from lungcam.report.metrics import cohort_metrics
from lungcam.report.pages import QC_MEASURES, methods_paragraph, patient_context, qc_outliers, qc_table, render, summary_context, verdict

from .conftest import snakemake

SCREENSHOTS = Path(os.environ.get("LUNGCAM_SCREENSHOTS", Path(__file__).resolve().parents[1] / "tests" / "screenshots"))


def test_folder_digest_changes_with_any_file_name_or_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.dcm").write_bytes(b"one")
    (tmp_path / "2.dcm").write_bytes(b"two")
    first = folder_digest(tmp_path)
    assert first == folder_digest(tmp_path) and len(first) == 64
    (tmp_path / "2.dcm").write_bytes(b"twO")
    changed = folder_digest(tmp_path)
    (tmp_path / "2.dcm").rename(tmp_path / "3.dcm")
    renamed = folder_digest(tmp_path)
    assert len({first, changed, renamed}) == 3


def test_leak_scan_decodes_images_embedded_in_html(tmp_path):
    """Base64 text that spells a name by chance is no leak; a name inside the embedded data is."""
    (tmp_path / "chance.html").write_text('<img src="data:image/png;base64,janeAAAA">')
    hidden = base64.b64encode(b"\x89PNG tEXt Author Jane Smith").decode()
    (tmp_path / "hidden.html").write_text(f'<img src="data:image/png;base64,{hidden}">')
    assert find_leaks(tmp_path, ["Jane"]) == [("hidden.html", "Jane")]


def test_job_log_ends_with_the_peak_memory_of_the_job_and_its_children(tmp_path):
    """The job log's last line is the kernel's peak resident memory, children included: a child
    that holds 200 MB shows, as Snakemake's once-a-second sampling of short jobs may not. The
    job is started by a small intermediate process: at exec, Linux folds the starting process's
    peak into the new one's, and this test process has a large peak of its own."""
    import subprocess
    import sys

    from lungcam.core.joblog import PEAK_MEMORY

    child = "b = bytearray(200 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    job = (
        f"import subprocess, sys\nfrom lungcam.core.joblog import job_log\nwith job_log({str(tmp_path / 'job.log')!r}) as log:\n"
        f"    log.info('working')\n    subprocess.run([sys.executable, '-c', {child!r}], check=True)\n"
    )
    starter = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {job!r}], check=True)"
    subprocess.run([sys.executable, "-c", starter], check=True)
    lines = (tmp_path / "job.log").read_text().splitlines()
    assert "working" in lines[0] and lines[-1].startswith(PEAK_MEMORY)
    assert 200 <= float(lines[-1].removeprefix(PEAK_MEMORY)) < 1000


def test_cohort_table_names_the_stage_that_excluded_a_patient():
    records = [
        {
            "patient_id": "a",
            "status": "ok",
            "reasons": [],
            "stages": {"ingest": "ok", "lungs": "ok"},
            "warnings": ["ingest: uneven slice spacing", "lungs: the left lung mask ends abruptly"],
            "ingest": {"header": {"slice_thickness_mm": 1.0}, "hu": {"noise_hu": 12.0}},
            "lungs": {"total_ml": 4200.0},
        },
        {"patient_id": "b", "status": "excluded", "reasons": ["lungs: one lung missing"], "stages": {"ingest": "ok", "lungs": "excluded"}},
    ]
    predictions = pd.DataFrame(
        {"patient_id": ["a"], "label": ["CAP"], "fold": ["0"], "prob_CAP": [0.7], "prob_NP": [0.3], "predicted": ["CAP"]}
    )
    table = qc_table(records, predictions, {"a": {"total_percent": 3.5, "candidates": 2}}, {"a": "CAP", "b": "NP"}, {})
    a, b = table.set_index("patient_id").loc["a"], table.set_index("patient_id").loc["b"]
    assert (a["status"], a["predicted"], a["confidence"], a["lung_volume_ml"], a["burden_percent"]) == ("ok", "CAP", 0.7, 4200.0, 3.5)
    assert (b["status"], b["stage"], b["reasons"], b["label"]) == ("excluded", "lungs", "lungs: one lung missing", "NP")
    assert pd.isna(b["predicted"]) and pd.isna(b["lung_volume_ml"])
    assert (a["lung_warnings"], b["lung_warnings"]) == ("the left lung mask ends abruptly", "")


CLASSES = ["COVID-19", "CAP", "NP"]


def summary_with(tmp_path, records: list[dict], predictions: pd.DataFrame, metrics: dict) -> str:
    """The summary page of a small cohort, rendered with the default config."""
    labels = dict(zip(predictions["patient_id"], predictions["label"]))
    table = qc_table(records, predictions, {}, labels | {r["patient_id"]: "NP" for r in records if r["patient_id"] not in labels}, {})
    provenance = {"code": {"describe": "v1", "dirty": False}, "config_hash": "x", "software": {"lungcam": "0.1.0"}, "inputs": {}}
    context = summary_context(table, metrics, provenance, load_config(), CLASSES, [], "")
    render("summary.html.j2", context, tmp_path / "summary.html")
    return (tmp_path / "summary.html").read_text()


def verdict_box(page: str) -> str:
    return re.search(r'<div id="verdict".*?</div>', page, re.DOTALL).group(0)


OK_RECORD = {"status": "ok", "reasons": [], "stages": {"ingest": "ok", "lungs": "ok"}, "warnings": []}


def three_patients(probabilities: list[list[float]]) -> pd.DataFrame:
    """Predictions of patients a, b, c (labelled COVID-19, CAP, NP; one per fold), each
    predicted its most probable class."""
    table = pd.DataFrame({"patient_id": ["a", "b", "c"], "label": CLASSES, "fold": ["0", "1", "2"]})
    for column, values in zip(CLASSES, zip(*probabilities)):
        table[f"prob_{column}"] = values
    table["predicted"] = [CLASSES[max(range(3), key=row.__getitem__)] for row in probabilities]
    return table


def metrics_of(predictions: pd.DataFrame) -> dict:
    """metrics.json of a run without lesion masks, slice metrics or nuisance baseline."""
    classification = cohort_metrics(predictions, CLASSES, seed=0, repeats=200)
    return {"classification": classification, "localisation": None, "slice_level": None, "nuisance_baseline": None, "bootstrap": 200}


def test_summary_verdict_reports_a_failed_stage_and_a_chance_level_metric(tmp_path):
    records = [{"patient_id": p} | OK_RECORD for p in ("a", "b", "c")] + [
        {
            "patient_id": "d",
            "status": "excluded",
            "reasons": ["ingest: unexpected error during ingest (RuntimeError: decoder exploded); see the job log"],
            "stages": {"ingest": "excluded"},
        }
    ]
    predictions = three_patients([[0.5, 0.2, 0.3]] * 3)  # every patient predicted COVID-19
    metrics = metrics_of(predictions)
    page = summary_with(tmp_path, records, predictions, metrics)
    box = verdict_box(page)
    assert 'class="verdict bad"' in box
    for text in (
        "ingest failed with an unexpected error for 1 patient(s)",
        "accuracy 0.333 is not above chance (0.333",
        "macro ROC AUC 0.500 is not above chance",
        "no patient was predicted CAP",
        "no patient was predicted NP",
    ):
        assert text in box, text
    assert box.index("ingest failed") < box.index("no patient was predicted")  # errors first
    table = qc_table(records, predictions, {}, {}, {})
    pointing = verdict(table, metrics | {"localisation": {"pointing_game": {"mean": 0.0, "n": 2}}}, CLASSES)
    assert {
        "level": "error",
        "text": "the maps' peak lies in a lesion for none of 2 patients with lesion masks (pointing game 0)",
    } in pointing


def test_summary_verdict_is_clean_for_a_sound_cohort(tmp_path):
    predictions = three_patients([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    page = summary_with(tmp_path, [{"patient_id": p} | OK_RECORD for p in "abc"], predictions, metrics_of(predictions))
    box = verdict_box(page)
    assert 'class="verdict good"' in box and "No failed stage" in box
    assert page.count("n too small (fewer than 10 patients)") == 3  # one patient per fold: no per-fold CIs


def test_reports_give_no_burden_for_predicted_np_and_flag_training_patients():
    """A scan judged free of pneumonia gets no infection burden, in its report or the summary;
    a patient the prediction model was trained on is flagged in both."""
    qc = {"patient_id": "a", "status": "ok", "reasons": [], "stages": {"ingest": "ok"}, "warnings": [], "ingest": {}, "lungs": {}}
    model = {"path": "model.pt", "sha256": "ab" * 32, "classes": ["CAP", "NP"], "trained_on": 30}
    provenance = {"code": {}, "config_hash": "x", "software": {}, "inputs": {}}
    burden = {"total_percent": 37.0, "right_percent": 40.0, "left_percent": 34.0, "flagged_ml": 900.0, "candidates": 3}
    lesions = pd.DataFrame({"lesion": [1], "volume_ml": [5.0]})
    classes = ["CAP", "NP"]
    for predicted, trained_on in (("NP", "True"), ("CAP", "False")):
        prediction = {
            "patient_id": "a",
            "label": "NP",
            "fold": "predict",
            "trained_on": trained_on,
            "prob_CAP": 0.4,
            "prob_NP": 0.6,
            "predicted": predicted,
        }
        context = patient_context(
            qc,
            provenance,
            label="NP",
            prediction=prediction,
            classes=classes,
            lesions=lesions,
            burden=burden,
            map_target="label",
            models={"predict": model},
        )
        assert context["map_class"] == "NP" and context["provenance"]["model"] == model
        assert (context["burden"] is None) == (predicted == "NP") and bool(context["burden_note"]) == (predicted == "NP")
        assert (context["lesions"] == []) == (predicted == "NP")
        assert any("trained on" in w for w in context["warnings"]) == (trained_on == "True")
        table = qc_table([qc], pd.DataFrame([prediction]), {"a": burden}, {"a": "NP"}, {})
        row = table.iloc[0]
        assert pd.isna(row["burden_percent"]) == (predicted == "NP") and bool(row["trained_on"]) == (trained_on == "True")


def test_qc_outliers_are_flagged_within_their_class_and_ringed_in_the_strip_plot():
    """A lobe cut off shows as a low left/right ratio: more than 3 robust SDs from the class median."""
    ratios = [0.86, 0.88, 0.9, 0.84, 0.87, 0.89, 0.31]
    table = pd.DataFrame(
        {
            "patient_id": [f"p{i}" for i in range(7)] + ["n1"],
            "label": ["CAP"] * 7 + ["NP"],
            "left_right_ratio": ratios + [0.2],  # alone in its class: never an outlier
            "lung_volume_ml": [4000.0, 4100.0, 3900.0, 4050.0, 3950.0, 4020.0, 3980.0, 4000.0],
        }
    )
    found = qc_outliers(table, QC_MEASURES)
    assert found == [{"patient_id": "p6", "measure": "left/right lung volume", "value": 0.31, "median": 0.87}]
    links = {p: f"reports/{p}.html" for p in table["patient_id"]}
    ringed = qc_strip_svg(table, QC_MEASURES, ["CAP", "NP"], links, {("p6", "left/right lung volume")})
    assert ringed.count("#b3261e") > qc_strip_svg(table, QC_MEASURES, ["CAP", "NP"], links).count("#b3261e")


def test_qc_strip_points_link_to_reports_and_the_figure_is_reproducible():
    table = pd.DataFrame(
        {
            "patient_id": ["a", "b", "c", "d"],
            "label": ["CAP", "NP", "", "CAP"],
            "lung_volume_ml": [4000.0, 5200.0, 3100.0, None],
            "noise_hu": [10.0, 12.0, None, 9.0],
        }
    )
    links = {p: f"reports/{p}.html" for p in table["patient_id"]}
    svg = qc_strip_svg(table, QC_MEASURES, ["COVID-19", "CAP", "NP"], links)
    assert svg.startswith("<svg") and svg == qc_strip_svg(table, QC_MEASURES, ["COVID-19", "CAP", "NP"], links)
    anchors = re.findall(r'<a xlink:href="(reports/\w+\.html)"', svg)
    assert sorted(anchors) == sorted(
        ["reports/a.html", "reports/b.html", "reports/c.html", "reports/a.html", "reports/b.html", "reports/d.html"]
    )
    assert "lung volume (mL)" in svg and "unlabelled" in svg and "slice thickness" not in svg  # measures without values are left out


def test_methods_paragraph_follows_the_config():
    config = load_config()
    text = methods_paragraph(config, ["COVID-19", "CAP", "NP"], 10, 1)
    assert "Hu et al. (IEEE Access 2020)" in text and "5 stratified folds" in text and "1 were excluded" in text
    assert "completed by a learned lung prior" in text and "a 2 mm margin into soft tissue around consolidation" in text
    config["lungs"]["prior"]["use"], config["lungs"]["lesion_margin"]["margin_mm"] = False, 0.0
    assert "learned lung prior" not in methods_paragraph(config, ["COVID-19", "CAP", "NP"], 10, 1)
    assert "margin" not in methods_paragraph(config, ["COVID-19", "CAP", "NP"], 10, 1)
    assert (
        "lungcam's mean of the network's three class activation maps" in text
        and "not the paper's own map" in text
        and "2 x 2 offsets" in text
        and "smoothed within the lungs (Gaussian, sigma 4 mm)" in text
    )
    config["cam"]["method"], config["cam"]["shifts"], config["cam"]["smooth_mm"], config["train"]["model"] = "layercam", 1, 0.0, "mil"
    text = methods_paragraph(config, ["COVID-19", "NP"], 10, 0)
    assert "LayerCAM" in text and "attention pooling" in text and "offsets" not in text and "smoothed" not in text
    config["cam"]["method"], config["cam"]["shifts"] = "integrated_gradients", 4  # evaluated once whatever the shifts
    assert "offsets" not in methods_paragraph(config, ["COVID-19", "NP"], 10, 0)
    for method in load_schema("config.schema.yaml")["properties"]["cam"]["properties"]["method"]["enum"]:  # every map method is described
        config["cam"]["method"] = method
        assert "Infection maps are " in methods_paragraph(config, ["COVID-19", "NP"], 10, 0)
    config["train"]["model"] = "hu2020"
    for aggregation in load_schema("config.schema.yaml")["properties"]["train"]["properties"]["aggregation"][
        "enum"
    ]:  # and every aggregation
        config["train"]["aggregation"] = aggregation
        assert "aggregated per patient by " in methods_paragraph(config, ["COVID-19", "NP"], 10, 0)
    assert (
        "every training patient trained for 50 epochs, and an exponential moving average of the weights over about 8 epochs of the last"
        in text
    )
    assert "a map value of 0.45, fixed before evaluation" in text
    config["train"].update(validation_fraction=0.15, ema_epochs=0.0)  # the paper's way
    config["cam"]["lesions"]["threshold"] = "relative"
    text = methods_paragraph(config, ["COVID-19", "NP"], 10, 0)
    assert "lowest loss on 15% of the training patients held out" in text and "moving average" not in text
    assert "0.5 of each scan's map maximum (which flags part of every scan)" in text


@pytest.mark.slow
def test_snakemake_report_builds_with_categories(training_demo, tmp_path):
    """`snakemake --report report.zip` holds the summary with every patient report beside it
    (its links resolve in the unpacked report: a browser opens a patient report from it), the
    classification figures, the training curves, every patient's key slices and lung montage."""
    import zipfile

    from selenium.webdriver.common.by import By

    workdir, config = training_demo
    snakemake(workdir, "--configfile", str(config), "--report", "report.zip")
    with zipfile.ZipFile(workdir / "report.zip") as bundle:
        names = bundle.namelist()
        bundle.extractall(tmp_path)
    for suffix in ("/roc_pr.png", "/reliability.png", "/fold2.png"):
        assert any(n.endswith(suffix) for n in names), suffix
    assert len([n for n in names if re.search(r"demo\d+_key_slices\.png$", n)]) == 9
    assert len([n for n in names if re.search(r"(^|/)demo\d+\.png$", n)]) == 9
    summary = next(tmp_path / n for n in names if n.endswith("/summary.html"))
    assert len(list((summary.parent / "reports").glob("demo*.html"))) == 10  # 9 patients and the excluded scout
    driver = browser()
    try:
        links, _ = check_page(driver, summary, SCREENSHOTS / "report_zip_summary.png")
        assert any(link.startswith("reports/") for link in links)
        driver.find_element(By.CSS_SELECTOR, "#cohort tbody td:first-child a").click()
        assert driver.title.startswith("lungcam report: demo")
    finally:
        driver.quit()


def browser():
    """A headless Chromium driven by chromedriver, collecting the console's messages."""
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not (chromium and driver):
        message = "needs the Debian packages chromium and chromium-driver (make browser)"
        if os.environ.get("LUNGCAM_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


PAGE_FACTS = """
const links = Array.from(document.querySelectorAll("a"))
  .map(a => a.getAttribute("href") || a.getAttributeNS("http://www.w3.org/1999/xlink", "href"));
const images = Array.from(document.images).map(i => [i.alt, i.complete && i.naturalWidth > 0]);
const ids = Array.from(document.querySelectorAll("[id]")).map(e => e.id);
return [links, images, ids];
"""


def check_page(driver, path: Path, screenshot: Path) -> tuple[list[str], int]:
    """Open `path`; every image must load, every link resolve (to an existing file or an id on
    the page), and the console stay free of errors. Returns the links and the image count."""
    driver.get(path.as_uri())
    links, images, ids = driver.execute_script(PAGE_FACTS)
    assert all(loaded for _, loaded in images), [alt for alt, loaded in images if not loaded]
    for link in links:
        assert link, f"{path.name}: a link without a target"
        target = urlparse(link)
        if target.scheme in ("", "file") and target.path:
            assert (path.parent / unquote(target.path)).resolve().is_file(), f"{path.name}: broken link {link}"
        elif target.fragment and not target.path:
            assert target.fragment in ids, f"{path.name}: no element #{target.fragment}"
        else:
            raise AssertionError(f"{path.name}: unexpected external link {link}")
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(1280, min(driver.execute_script("return document.body.scrollHeight") + 100, 12000))
    driver.save_screenshot(str(screenshot))
    return links, len(images)


@pytest.mark.slow
def test_summary_and_reports_in_headless_chromium(training_demo, tmp_path):
    """The summary and three patient reports (one mapped with lesions, one NP, one excluded) in a
    real browser: the cohort table sorts when its heading is clicked; each report carries the
    research-use notice and stays within 250 KB; a mapped patient's map has its colour scale,
    R/L markers and slice positions; the rating control saves a file that the summary loads.
    Screenshots go to tests/screenshots/ (or $LUNGCAM_SCREENSHOTS)."""
    import time

    from selenium.webdriver.common.by import By

    workdir, _ = training_demo
    results = workdir / "results"
    predictions = pd.read_csv(results / "predictions.tsv", sep="\t").set_index("patient_id")
    mapped = next(p for p, row in predictions.iterrows() if row["label"] != "NP" and row["predicted"] != "NP")
    normal = next(p for p, row in predictions.iterrows() if row["label"] == "NP")
    driver = browser()
    downloads = tmp_path / "downloads"
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    try:
        links, images = check_page(driver, results / "summary.html", SCREENSHOTS / "summary.png")
        reports = {p.name for p in (results / "reports").iterdir()}
        assert {Path(link).name for link in links if link.startswith("reports/")} == reports  # every report linked, QC points included
        assert images >= 3 + 3  # ROC/PR, confusion, reliability, and the training curves of 3 folds
        assert driver.find_element(By.ID, "verdict").is_displayed()
        patient_column = [row.text for row in driver.find_elements(By.CSS_SELECTOR, "#cohort tbody td:first-child")]
        assert patient_column == sorted(patient_column)
        driver.find_element(By.CSS_SELECTOR, "#cohort th.sortable").click()
        driver.find_element(By.CSS_SELECTOR, "#cohort th.sortable").click()  # second click: descending
        assert [row.text for row in driver.find_elements(By.CSS_SELECTOR, "#cohort tbody td:first-child")] == sorted(
            patient_column, reverse=True
        )
        scout = sorted(reports)[-1]
        for patient in (mapped, normal, Path(scout).stem):
            page = results / "reports" / f"{patient}.html"
            assert page.stat().st_size <= 250_000, f"{page.name}: {page.stat().st_size} bytes"
            check_page(driver, page, SCREENSHOTS / f"report_{patient}.png")
            assert "Research use only, not for diagnosis" in driver.find_element(By.CLASS_NAME, "notice").text
        check_page(driver, results / "reports" / f"{mapped}.html", SCREENSHOTS / f"report_{mapped}.png")
        caption = driver.find_element(By.CSS_SELECTOR, "#key-slices figcaption").text
        assert "Colour scale: map values" in caption and "R: the patient's right, L: the patient's left" in caption
        assert re.search(r"Slices shown: \d+ of \d+ from the top \(z -?\d+\.\d mm\)", caption), caption
        driver.find_element(By.CSS_SELECTOR, "#rating-form input[value=flag]").click()
        driver.find_element(By.CSS_SELECTOR, "#rating-form input[name=comment]").send_keys("check the left base")
        driver.find_element(By.ID, "save-rating").click()
        saved = downloads / f"rating_{mapped}.json"
        for _ in range(50):
            if saved.is_file():
                break
            time.sleep(0.2)
        rating = json.loads(saved.read_text())
        assert (rating["patient_id"], rating["rating"], rating["comment"]) == (mapped, "flag", "check the left base")
        driver.get((results / "summary.html").as_uri())
        driver.find_element(By.ID, "ratings").send_keys(str(saved))
        cell = driver.find_element(By.CSS_SELECTOR, f'td.rating[data-patient="{mapped}"]')
        for _ in range(50):
            if cell.text:
                break
            time.sleep(0.1)
        assert cell.text == "flag: check the left base"
        check_page(driver, results / "reports" / scout, SCREENSHOTS / f"report_{Path(scout).stem}.png")
        errors = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "div.error")]
        assert errors == ["ingest: only localizer (scout) images, no axial CT series"]
    finally:
        driver.quit()
