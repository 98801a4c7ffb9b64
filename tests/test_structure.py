"""The package is laid out by stage, and no stage reaches into another one's modules.

A stage package (`lungcam/<stage>/`) may import `lungcam.core`, its own modules, and the names
another stage lists in its interface (`from lungcam.train import load_model`); never another
stage's modules (`lungcam.train.inference`). Core imports no stage. A rule script may also use
the modules of the stage its rule file belongs to; the command line and the rule files only
interfaces.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

from .conftest import REPO

STAGES = ("ingest", "lungs", "train", "cam", "report", "phantom")
# The stage whose modules each rule file's scripts may use.
RULE_FILE_STAGE = {
    "demo": "phantom",
    "ingest": "ingest",
    "lungs": "lungs",
    "cache": "train",
    "train": "train",
    "prepare": "report",
    "cam": "cam",
    "report": "report",
}


def lungcam_imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, imported names) of every import of lungcam in a Python or rule file,
    relative imports resolved (a rule file's Python parts are read line by line)."""
    if path.suffix == ".py":
        tree = ast.parse(path.read_text())
        package = path.relative_to(REPO).with_suffix("").parts
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    base = package[: len(package) - node.level]
                    module = ".".join([*base, module] if module else base)
                found.append((node.lineno, module, [alias.name for alias in node.names]))
            elif isinstance(node, ast.Import):
                found += [(node.lineno, alias.name, []) for alias in node.names]
        return [item for item in found if item[1].split(".")[0] == "lungcam"]
    pattern = re.compile(r"^\s*from (lungcam[\w.]*) import ([\w, ]+)")
    return [
        (number, match.group(1), [name.strip() for name in match.group(2).split(",")])
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if (match := pattern.match(line))
    ]


def interface(stage: str) -> set[str]:
    return set(getattr(importlib.import_module(f"lungcam.{stage}"), "__all__", []))


def problems(path: Path, own: str | None) -> list[str]:
    """Imports in `path` that break the stage borders, for a file of stage `own` (None: the
    command line or a rule file, which belong to no stage)."""
    found = []
    for line, module, names in lungcam_imports(path):
        parts = module.split(".")
        where = f"{path.relative_to(REPO)}:{line}"
        if len(parts) == 1 or parts[1] not in STAGES:
            continue  # lungcam itself (the version), core, or the command line
        stage = parts[1]
        if own == "core":
            found.append(f"{where}: core imports the {stage} stage ({module})")
        elif stage == own:
            continue
        elif len(parts) > 2:
            found.append(f"{where}: imports {module}, a module of the {stage} stage; use lungcam.{stage}'s interface")
        else:
            outside = sorted(set(names) - interface(stage))
            if outside:
                found.append(f"{where}: {', '.join(outside)} not in lungcam.{stage}'s interface")
    return found


def script_stages() -> dict[Path, set[str]]:
    """Each rule script and the stages whose rule files run it."""
    stages: dict[Path, set[str]] = {}
    for rules in (REPO / "workflow" / "rules").glob("*.smk"):
        for script in re.findall(r"\"\.\./\.\./scripts/(\w+\.py)\"", rules.read_text()):
            stages.setdefault(REPO / "scripts" / script, set()).add(RULE_FILE_STAGE[rules.stem])
    return stages


def test_every_module_lives_in_a_stage_or_core():
    top = sorted(p.name for p in (REPO / "lungcam").glob("*.py"))
    assert top == ["__init__.py", "cli.py"]
    for stage in (*STAGES, "core"):
        assert (REPO / "lungcam" / stage / "__init__.py").is_file(), stage


def test_no_module_imports_another_stages_internals():
    found = []
    for path in sorted((REPO / "lungcam").rglob("*.py")):
        part = path.relative_to(REPO / "lungcam").parts[0]
        found += problems(path, part if part in (*STAGES, "core") else None)
    assert not found, "\n".join(found)


def test_scripts_and_rule_files_keep_to_the_stage_borders():
    found = []
    for script, stages in sorted(script_stages().items()):
        for stage in stages:
            found += problems(script, stage)
    for rules in sorted([REPO / "Snakefile", *(REPO / "workflow" / "rules").rglob("*.smk")]):
        found += problems(rules, None)
    assert not found, "\n".join(found)
    assert set(script_stages()) == set((REPO / "scripts").glob("*.py")), "a script no rule runs"


@pytest.mark.parametrize("stage", STAGES)
def test_interface_names_exist(stage):
    package = importlib.import_module(f"lungcam.{stage}")
    for name in interface(stage):
        assert getattr(package, name) is not None


def test_a_crossing_import_is_caught(tmp_path, monkeypatch):
    """The check itself: a cam module reaching into train's modules, and core importing a stage."""
    monkeypatch.setattr("tests.test_structure.REPO", tmp_path)
    (tmp_path / "lungcam" / "cam").mkdir(parents=True)
    (tmp_path / "lungcam" / "core").mkdir()
    bad = tmp_path / "lungcam" / "cam" / "bad.py"
    bad.write_text("from lungcam.train.inference import load_model\nfrom lungcam.train import load_model\n")
    assert problems(bad, "cam") == [
        "lungcam/cam/bad.py:1: imports lungcam.train.inference, a module of the train stage; use lungcam.train's interface"
    ]
    sneaky = tmp_path / "lungcam" / "core" / "sneaky.py"
    sneaky.write_text("from ..lungs import run_lungs\n")
    assert problems(sneaky, "core") == ["lungcam/core/sneaky.py:1: core imports the lungs stage (lungcam.lungs)"]
    outside = tmp_path / "lungcam" / "cam" / "outside.py"
    outside.write_text("from lungcam.train import IMAGES_NAME\n")
    assert problems(outside, "cam") == ["lungcam/cam/outside.py:1: IMAGES_NAME not in lungcam.train's interface"]


def layout() -> dict[str, str]:
    """The LAYOUT table of workflow/rules/common.smk: every file the workflow writes."""
    text = (REPO / "workflow" / "rules" / "common.smk").read_text()
    return ast.literal_eval(re.search(r"^LAYOUT = (\{.*?^\})", text, re.MULTILINE | re.DOTALL).group(1))


def test_every_path_is_made_by_the_path_builder():
    """No rule file but common.smk spells out a results/, work/, logs/ or demo/ path."""
    spelled = re.compile(r"[\"'](results|work|logs|demo)/")
    found = [
        f"{rules.relative_to(REPO)}:{number}"
        for rules in sorted([REPO / "Snakefile", *(REPO / "workflow" / "rules").rglob("*.smk")])
        if rules.name != "common.smk"
        for number, line in enumerate(rules.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert not found, found


def test_the_layout_holds_every_output_of_the_contract():
    """Each output ../shared/CONTRACT.md promises under results/ is a LAYOUT entry."""
    contract = (REPO.parent / "shared" / "CONTRACT.md").read_text()
    outputs = contract[contract.index("## Outputs") :]
    promised = []
    for cell in re.findall(r"^\| (`[^|]+`) \|", outputs, re.MULTILINE):
        first, *others = re.findall(r"`([^`]+)`", cell)
        first = "results/" + first.replace("{patient_id}", "{patient}")
        promised += [first] + [first.removesuffix(".nii.gz") + other for other in others]  # `x.nii.gz` + `.json`
    missing = sorted(set(promised) - set(layout().values()))
    assert promised and not missing, missing
