"""`make demo` installs only what the demo runs (pyproject.toml's `demo` extra), and a
.venv made for it gets the rest of the developer stack at the first `make test`."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from harness import demo

ROOT = Path(__file__).resolve().parent.parent
# The harness modules `python -m harness.demo` imports.
DEMO_MODULES = ("demo.py", "synapse.py", "matrix_user.py", "net.py")


def dry_run(target: str, venv: Path) -> str:
    """What `make -n <target>` would run, with .venv at `venv`."""
    return subprocess.run(
        ["make", "-n", target, f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    names = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert match, requirement
        names.add(canonical(match.group()))
    return names


def test_make_demo_installs_the_demo_extra_quietly_and_not_the_developer_stack(
    tmp_path: Path,
) -> None:
    commands = dry_run("demo", tmp_path / ".venv")
    assert "-e '.[demo]'" in commands
    assert ".[dev]" not in commands
    assert ".[test]" not in commands
    assert "Installing Gatekeeper and Synapse into" in commands
    assert "--quiet" in commands


def test_a_demo_venv_is_completed_by_the_first_make_test(tmp_path: Path) -> None:
    venv = tmp_path / ".venv"
    venv.mkdir()
    (venv / ".installed-demo").touch()  # made by make demo, after pyproject.toml changed
    assert "pip" not in dry_run("demo", venv)
    assert "-e '.[dev]'" in dry_run("install", venv)

    (venv / ".installed-dev").touch()  # [dev] holds [demo]: nothing more for either
    assert "pip" not in dry_run("install", venv)
    assert "pip" not in dry_run("demo", venv)


def test_the_demo_extra_holds_what_the_demo_imports_and_the_tests_get_it_too() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    available = requirement_names(project["dependencies"] + extras["demo"])
    # The demo starts Synapse as `python -m synapse.app.homeserver`: no import says so.
    assert "matrix-synapse" in available
    assert "gatekeeper[demo]" in extras["test"]
    assert "gatekeeper[test]" in extras["dev"]

    distributions = packages_distributions()
    missing = set()
    for name in DEMO_MODULES:
        tree = ast.parse((ROOT / "harness" / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in ("gatekeeper", "harness"):
                    continue
                if not {canonical(d) for d in distributions.get(top, [])} & available:
                    missing.add(f"{name}: {module}")
    assert not missing, f"the demo imports what make demo does not install: {missing}"


def test_the_readme_says_the_demo_ports_are_only_the_preferred_ones() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try it: `make demo`")[1].split("\n## ")[0]
    synapse, _, web, _ = demo.PREFERRED_PORTS
    assert f"http://127.0.0.1:{synapse}" in section
    assert f"http://127.0.0.1:{web}/sign-up" in section
    flat = " ".join(section.split())
    assert f"{synapse} and {web} when they are free" in flat
    assert "the demo prints the ones it uses" in flat
