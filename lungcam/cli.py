"""Command line: `lungcam phantom` (a synthetic cohort), `lungcam ingest` (one patient's DICOM
folder), `lungcam predict-scan` (a model file applied to one scan) and `lungcam train-fold`
(what the workflow's training jobs run).

Defaults come from the configuration schema, so `lungcam phantom demo/` writes the same cohort
as the workflow's demo mode with default settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lungcam import __version__
from lungcam.core.config import load_config


def _phantom_one(args: tuple) -> dict:
    from lungcam.core.records import write_record
    from lungcam.phantom import cohort_layout, generate_patient

    plan, options, out, background = args
    paths = cohort_layout(out, plan.patient_id)
    result = generate_patient(plan, options, paths["dicom"], paths["lungs"], paths["lesions"], background=background)
    write_record(paths["record"], result.record)
    return result.record


def run_phantom(args: argparse.Namespace) -> int:
    from lungcam.phantom import PhantomOptions, plan_cohort, sample_rows, write_sample_sheet

    demo = load_config()["demo"]
    options = PhantomOptions(
        matrix=args.matrix or demo["matrix"],
        localizer=not args.no_localizer,
        thick_series=not args.no_thick_series,
    )
    out = Path(args.out)
    plans = plan_cohort(args.patients_per_class, args.seed)
    background = None
    if args.background:
        from lungcam.phantom import RealBackground

        background = RealBackground.load(Path(args.background))
    jobs = [(plan, options, out, background) for plan in plans]
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for record in pool.map(_phantom_one, jobs):
            print(f"{record['patient_id']}\t{record['label']}\t{record['slices']} slices\tlesions {record['lesion_ml']} mL")
    write_sample_sheet(sample_rows(plans, out, relative_to=out), out / "samples.tsv")
    print(f"sample sheet: {out / 'samples.tsv'}")
    return 0


def run_ingest(args: argparse.Namespace) -> int:
    from lungcam.ingest import IngestSettings, ingest_patient

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    settings = IngestSettings.from_config(load_config()["ingest"])
    record = ingest_patient(args.patient_id, Path(args.dicom_dir), Path(args.out), settings)
    json.dump(record, sys.stdout, indent=2, default=str)
    print()
    return 0 if record["status"] == "ok" else 3


def run_train_fold(args: argparse.Namespace) -> int:
    """One fold's training; run directly or under torchrun for several GPUs."""
    import pandas as pd

    from lungcam.train import TrainSettings, train_fold

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = TrainSettings.from_config(json.loads(args.settings))
    patients = pd.read_csv(args.folds, sep="\t", dtype={"patient_id": str})
    outputs = {"model": args.model, "curves": args.curves, "curves_png": args.curves_png, "predictions": args.predictions}
    train_fold(settings, json.loads(args.classes), args.bank, patients, args.fold, args.work, outputs, threads=args.threads)
    return 0


def run_predict_scan(args: argparse.Namespace) -> int:
    """A model file applied to one scan, as the workflow's mode predict does for a cohort."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    prior = Path(args.lung_prior) if args.lung_prior else None
    record = predict_scan(Path(args.scan), Path(args.model), Path(args.out), args.device, prior)
    json.dump(record, sys.stdout, indent=2)
    print()
    return 0 if record["status"] == "ok" else 3


def predict_scan(scan: Path, model_file: Path, out: Path, device: str = "cpu", prior: Path | None = None) -> dict:
    """Ingest `scan` (a DICOM folder, or a NIfTI in HU), segment its lungs (the threshold method,
    completed by the learned lung prior whose weights are `prior`, if given), prepare it as
    `model_file` was trained, classify it and map it: writes scan.nii.gz (DICOM only),
    lungs.nii.gz, cam.nii.gz, key_slices.png and prediction.json into `out`; returns the
    prediction record (status `excluded` with the reasons when a stage refused the scan)."""
    from lungcam.core.records import write_record

    out.mkdir(parents=True, exist_ok=True)
    record = {"scan": str(scan), "model": str(model_file)} | _predicted(scan, model_file, out, device, prior)
    write_record(out / "prediction.json", record)
    return record


def _predicted(scan: Path, model_file: Path, out: Path, device: str, prior: Path | None, scan_id: str = "scan") -> dict:
    from lungcam.cam import MapSettings, write_patient_cam
    from lungcam.core.config import validate_config
    from lungcam.core.device import pick_device
    from lungcam.ingest import VOLUME_NAME, IngestSettings, ingest_patient
    from lungcam.lungs import LungSettings, run_lungs
    from lungcam.train import CacheSettings, SliceBank, build_cache, build_slice_bank, load_model, predict_patients, with_decisions

    config = validate_config({})
    work = out / "work"
    record = {"status": "ok", "reasons": []}
    volume = scan
    if scan.is_dir():
        ingested = ingest_patient(scan_id, scan, work / "ingest", IngestSettings.from_config(config["ingest"]))
        if ingested["status"] != "ok":
            return record | {"status": "excluded", "reasons": [f"ingest: {r}" for r in ingested["reasons"]]}
        volume = out / "scan.nii.gz"
        volume.write_bytes((work / "ingest" / VOLUME_NAME).read_bytes())
    lungs = run_lungs(
        scan_id,
        volume,
        {"labels": out / "lungs.nii.gz", "montage": work / "lungs.png", "record": work / "lungs.json"},
        LungSettings.from_config(config["lungs"]),
        prior=prior,
    )
    record["lung_method"] = lungs["method"]
    record["lung_warnings"] = lungs["warnings"]
    if lungs["status"] != "ok":
        return record | {"status": "excluded", "reasons": [f"lungs: {r}" for r in lungs["reasons"]]}
    torch_device = pick_device(device)
    model, metadata = load_model(model_file, torch_device)
    preprocessing = metadata["preprocessing"]
    build_cache(volume, out / "lungs.nii.gz", work / "cache", CacheSettings.from_config(preprocessing["cache"]))
    build_slice_bank(
        {scan_id: work / "cache"}, work / "bank", preprocessing["input_size"], preprocessing["min_lung_fraction"], preprocessing["cache"]
    )
    row = with_decisions(predict_patients(model, metadata, SliceBank.load(work / "bank"), [scan_id], torch_device), metadata["classes"])
    prediction = row.iloc[0].to_dict() | {"label": "", "fold": "predict"}
    record |= {"predicted": prediction["predicted"]} | {k: float(v) for k, v in prediction.items() if k.startswith("prob_")}
    record["map"] = write_patient_cam(
        model_file,
        prediction,
        MapSettings.from_config(config["cam"]),
        cache=work / "cache",
        lungs=out / "lungs.nii.gz",
        cam=out / "cam.nii.gz",
        device=torch_device,
        volume=volume,
        key_slices=out / "key_slices.png",
    )
    return record


def build_parser() -> argparse.ArgumentParser:
    defaults = load_config()["demo"]
    parser = argparse.ArgumentParser(prog="lungcam", description="chest CT -> weakly supervised COVID-19 classifier and infection maps")
    parser.add_argument("--version", action="version", version=f"lungcam {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{phantom,ingest,predict-scan,train-fold}")

    phantom = commands.add_parser("phantom", help="write a synthetic chest CT cohort (DICOM, truth masks, sample sheet)")
    phantom.add_argument("out", help="output folder (dicom/, truth/, samples.tsv)")
    phantom.add_argument("--patients-per-class", type=int, default=defaults["patients_per_class"])
    phantom.add_argument("--seed", type=int, default=defaults["seed"])
    phantom.add_argument("--matrix", type=int, choices=[128, 192, 256, 384, 512], default=defaults["matrix"])
    phantom.add_argument("--background", help="DICOM folder of a real normal chest CT to insert lesions into")
    phantom.add_argument("--no-localizer", action="store_true", help="do not write a localizer series")
    phantom.add_argument("--no-thick-series", action="store_true", help="do not write the thick-slice series")
    phantom.add_argument("--jobs", type=int, default=1, help="patients generated in parallel")
    phantom.set_defaults(run=run_phantom)

    ingest = commands.add_parser("ingest", help="convert and check one patient's DICOM folder; prints its record")
    ingest.add_argument("patient_id")
    ingest.add_argument("dicom_dir")
    ingest.add_argument("out", help="stage folder to write (scan.nii.gz, scan.json, record.json)")
    ingest.set_defaults(run=run_ingest)

    predict = commands.add_parser("predict-scan", help="apply a model file to one DICOM folder or NIfTI: map and probabilities")
    predict.add_argument("scan", help="DICOM folder of one study, or a NIfTI volume in HU")
    predict.add_argument("model", help="model file (results/model/fold<k>.pt or final.pt of a training run)")
    predict.add_argument("out", help="output folder (lungs.nii.gz, cam.nii.gz, key_slices.png, prediction.json)")
    predict.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    predict.add_argument("--lung-prior", help="the learned lung prior's weights (a workflow's resources/lung_prior.pt); default: none")
    predict.set_defaults(run=run_predict_scan)

    train = commands.add_parser("train-fold", help="train one cross-validation fold (or 'final') from a slice bank")
    train.add_argument("--bank", required=True, help="slice bank folder")
    train.add_argument("--folds", required=True, help="folds.tsv (patient_id, label, fold)")
    train.add_argument("--fold", required=True, help="fold number, or 'final' to train on all patients")
    train.add_argument("--work", required=True, help="folder for the resumable training state")
    train.add_argument("--model", required=True)
    train.add_argument("--curves", required=True)
    train.add_argument("--curves-png", required=True)
    train.add_argument("--predictions", default="", help="out-of-fold predictions (not for 'final')")
    train.add_argument("--settings", required=True, help="the train config section as JSON")
    train.add_argument("--classes", required=True, help="the task's classes as a JSON list")
    train.add_argument("--threads", type=int, default=1)
    train.set_defaults(run=run_train_fold)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
