"""benchmarks/compare_runs.py: what two runs computed differently, whatever their code versions."""

from __future__ import annotations

import gzip
import importlib.util
import json

from .conftest import REPO

spec = importlib.util.spec_from_file_location("compare_runs", REPO / "benchmarks" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)

REPORT = """<table>
  <tr><th>code version (git)</th><td>{commit}</td></tr>
  <tr><th>config hash</th><td>abc</td></tr>
</table>
<table>
  <tr><th>stage (rule)</th><th>wall time (s)</th><th>CPU time (s)</th><th>peak memory (MB)</th></tr>
  <tr><td>ingest</td><td class="num">{seconds}</td><td class="num">1.0</td><td class="num">100</td></tr>
</table>
<p>predicted {predicted}</p>
"""


def write_run(root, commit: str, seconds: str, predicted: str, mtime: int, extra: bool = False) -> None:
    (root / "results" / "reports").mkdir(parents=True)
    (root / "results" / "nifti").mkdir()
    (root / "demo").mkdir()
    (root / "results" / "reports" / "p1.html").write_text(REPORT.format(commit=commit, seconds=seconds, predicted=predicted))
    (root / "results" / "nifti" / "p1.nii.gz").write_bytes(gzip.compress(b"voxels", mtime=mtime))
    (root / "results" / "provenance.json").write_text(json.dumps({"code": {"commit": commit}, "config_hash": "abc"}))
    (root / "demo" / "samples.tsv").write_text("patient_id\tlabel\np1\tNP\n")
    (root / "results" / "training").mkdir()
    (root / "results" / "training" / "fold0.tsv").write_text(f"epoch\ttrain_loss\tseconds\n0\t1.5\t{seconds}\n")
    if extra:
        (root / "results" / "extra.tsv").write_text("x\n")


def test_runs_that_differ_only_in_code_version_and_times_are_the_same(tmp_path):
    write_run(tmp_path / "a", "v1-1-gabc", "12.3", "NP", mtime=1)
    write_run(tmp_path / "b", "v1-2-gdef", "15.9", "NP", mtime=2)
    assert compare_runs.compare(tmp_path / "a", tmp_path / "b") == ([], 5)


def test_a_different_result_and_a_missing_file_are_reported(tmp_path):
    write_run(tmp_path / "a", "v1", "1.0", "NP", mtime=1)
    write_run(tmp_path / "b", "v1", "1.0", "CAP", mtime=1, extra=True)
    lines, compared = compare_runs.compare(tmp_path / "a", tmp_path / "b")
    assert lines == ["only in after: results/extra.tsv", "differs: results/reports/p1.html"] and compared == 5
