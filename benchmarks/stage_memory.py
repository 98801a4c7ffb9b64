"""Peak memory of every per-patient stage on a 512 x 512 x 600 scan, against its declared mem_mb.

Makes the scan from the real COVID-CT-MD case P001 (512 x 512 x 148, converted by lungcam's
ingest), interpolated along z to 600 slices and written as a DICOM series; runs the workflow on
it in mode predict with a trained model file (slice bank and prediction are cohort jobs, the
others per patient), one job at a time; and prints, per rule, the job's peak resident memory as
the kernel counted it (the last line of its log, lungcam.core.joblog) next to the rule's `mem_mb`.

    .venv/bin/python benchmarks/stage_memory.py demo-full2/results/model/fold0.pt
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lungcam.core.config import load_config  # noqa: E402
from lungcam.core.joblog import PEAK_MEMORY  # noqa: E402
from lungcam.core.orientation import load_hu_lps  # noqa: E402
from lungcam.ingest.stage import VOLUME_NAME, IngestSettings, ingest_patient  # noqa: E402
from lungcam.phantom.dicom_writer import FileNamer, SeriesSpec, StudyInfo, draw_identity, write_axial_series  # noqa: E402

PATIENT = "big600"


def write_big_series(source: Path, folder: Path, slices: int, scratch: Path) -> tuple[int, ...]:
    """The case at `source` (DICOM) interpolated to `slices` axial slices, written to `folder`."""
    record = ingest_patient("source", source, scratch, IngestSettings.from_config(load_config()["ingest"]))
    hu, view = load_hu_lps(scratch / VOLUME_NAME)
    dz, dy, dx = view.spacing
    big = ndimage.zoom(hu, (slices / hu.shape[0], 1, 1), order=1)
    zs = np.arange(slices) * dz * hu.shape[0] / slices
    ys, xs = np.arange(hu.shape[1]) * dy, np.arange(hu.shape[2]) * dx
    rng = np.random.default_rng(600)
    study = StudyInfo(
        key="lungcam-stage-memory",
        identity=draw_identity(rng),
        manufacturer=record["header"]["manufacturer"] or "SIEMENS",
        model="benchmark",
        kvp=120.0,
        tube_current_ma=200.0,
        patient_position="HFS",
        date="20200401",
        time="120000",
    )
    thickness = float(dz * hu.shape[0] / slices)
    write_axial_series(
        big, xs, ys, zs, SeriesSpec(2, f"Thorax {thickness:.2g} B30f", "B30f", thickness), study, 1, -1024.0, folder, FileNamer(rng)
    )
    return big.shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help="a trained model file (results/model/*.pt of a training run)")
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "covid-ct-md" / "P001")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shape = write_big_series(args.source, root / "dicom" / PATIENT, args.slices, root / "source")
        (root / "patients.tsv").write_text(f"patient_id\tlabel\tdicom_dir\n{PATIENT}\t\tdicom/{PATIENT}\n")
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "snakemake",
                "-s",
                str(REPO / "Snakefile"),
                "--cores",
                "1",
                "--directory",
                str(root / "run"),
                "--config",
                f"samples={root / 'patients.tsv'}",
                "mode=predict",
                f"predict={{'model': '{args.model.resolve()}'}}",
            ],
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            sys.exit(f"workflow failed:\n{run.stderr[-3000:]}")
        declared = {}
        for rule, resources in re.findall(
            r"^\s*(?:local)?(?:rule|checkpoint) (\w+):.*?^\s*resources: ([^\n]*)", run.stderr, re.MULTILINE | re.DOTALL
        ):
            found = re.search(r"\bmem_mb=(\d+)", resources)
            if found:
                declared[rule] = int(found.group(1))
        print(f"scan {shape[2]} x {shape[1]} x {shape[0]} (x, y, z), from {args.source.name}; one job at a time")
        print(f"{'rule':>16s}  {'peak RSS (MB)':>13s}  {'mem_mb':>7s}  within")
        for path in sorted((root / "run" / "logs").glob(f"*/{PATIENT}.log")):
            peak = float(path.read_text().splitlines()[-1].removeprefix(PEAK_MEMORY))
            limit = declared.get(path.parent.name)
            print(
                f"{path.parent.name:>16s}  {peak:13.0f}  {limit if limit else '-':>7}  "
                f"{'yes' if limit and peak <= limit else 'NO' if limit else '-'}"
            )


if __name__ == "__main__":
    main()
