"""Each rule's conda env holds what its script imports, pinned to requirements.txt's versions."""

from __future__ import annotations

import ast
import importlib
import re
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

# Import name -> conda-forge package name, where they differ.
CONDA_NAMES = {
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "torch": "pytorch",
    "SimpleITK": "simpleitk",
    "matplotlib": "matplotlib-base",
    "isal": "python-isal",
    "fill_voids": "fill-voids",
    "PIL": "pillow",
    "jinja2": "jinja2",
}
# requirements.txt name -> conda-forge package name, where they differ.
REQUIREMENT_NAMES = {
    "torch": "pytorch",
    "matplotlib": "matplotlib-base",
    "isal": "python-isal",
    "pyyaml": "pyyaml",
    "fill_voids": "fill-voids",
    "jinja2": "jinja2",
    "scikit-image": "scikit-image",
    "scikit-learn": "scikit-learn",
    "simpleitk": "simpleitk",
}
RULE = re.compile(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)+)", re.MULTILINE)


def rule_envs_and_scripts() -> list[tuple[str, Path, Path]]:
    """(rule, env file, script) for every rule with a script."""
    found = []
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for name, body in RULE.findall(path.read_text()):
            conda = re.search(r"conda:\s*\n\s*\"([^\"]+)\"", body)
            script = re.search(r"script:\s*\n\s*\"([^\"]+)\"", body)
            assert conda, f"rule {name} has no conda env"
            if script:
                found.append((name, (path.parent / conda.group(1)).resolve(), (path.parent / script.group(1)).resolve()))
    return found


def imported_packages(script: Path) -> set[str]:
    """Top-level third-party modules a script imports, through every lungcam module it reaches
    (imports inside functions too: the rule may call them)."""
    seen, todo, packages = set(), [script], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import within lungcam
                    parts = path.relative_to(REPO).with_suffix("").parts[: -node.level]
                    base = ".".join([*parts, base] if base else parts)
                names = [base] + [f"{base}.{alias.name}" for alias in node.names]
                if base.startswith("lungcam"):  # a stage's interface names load their modules
                    lazy = getattr(importlib.import_module(base), "INTERFACE", {})
                    names += [f"{base}.{lazy[alias.name]}" for alias in node.names if alias.name in lazy]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "lungcam":
                    module = REPO / Path(*name.split("."))
                    for candidate in (module.with_suffix(".py"), module / "__init__.py"):
                        if candidate.exists():
                            todo.append(candidate)
                elif top and top not in sys.stdlib_module_names and top != "__future__":
                    packages.add(top)
    return packages


def env_packages(env: Path) -> dict[str, str]:
    """Package -> version spec of a conda env file (conda and pip dependencies)."""
    listed = {}
    for entry in yaml.safe_load(env.read_text())["dependencies"]:
        for item in entry["pip"] if isinstance(entry, dict) else [entry]:
            name, _, spec = re.match(r"([A-Za-z0-9_.-]+)\s*(.*)", item).group(1, 0, 2)
            listed[name.lower()] = spec.strip()
    return listed


RULES = rule_envs_and_scripts()


@pytest.mark.parametrize("rule, env, script", RULES, ids=[r[0] for r in RULES])
def test_rule_env_lists_what_its_script_imports(rule, env, script):
    listed = env_packages(env)
    missing = sorted(p for p in imported_packages(script) if CONDA_NAMES.get(p, p).lower() not in listed)
    assert not missing, f"rule {rule}: {env.name} lacks {missing}"


def test_envs_pin_the_tested_versions():
    """Every package of requirements.txt that an env lists is pinned there to the same version,
    so a conda run uses what the tests ran with (one dcm2niix, not two)."""
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[REQUIREMENT_NAMES.get(name.lower(), name.lower())] = version.strip()
    for env in sorted((REPO / "envs").glob("*.yaml")):
        for name, spec in env_packages(env).items():
            if name in pins:
                assert spec.replace(" ", "").lstrip("=") == pins[name], f"{env.name}: {name} {spec!r}, requirements.txt {pins[name]}"
