"""The generated reference pages in docs/ match the code they are generated from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
GENERATED = ("config-reference.md", "api-reference.md", "admin-commands.md")


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("docs")
    subprocess.run(
        [sys.executable, str(DOCS / "generate.py"), "--output", str(output)],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return output


@pytest.mark.parametrize("name", GENERATED)
def test_generated_page_is_up_to_date(regenerated: Path, name: str) -> None:
    committed = DOCS / name
    assert committed.exists(), f"docs/{name} is missing: run make docs"
    assert committed.read_text(encoding="utf-8") == (regenerated / name).read_text(
        encoding="utf-8"
    ), f"docs/{name} is out of date with the code: run make docs"


def test_config_reference_names_every_example_key() -> None:
    example = YAML(typ="safe").load((ROOT / "appservice" / "example-config.yaml").read_text())
    reference = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    missing = [
        f"{section}.{key}"
        for section, keys in example.items()
        for key in keys
        if f"`{section}.{key}`" not in reference
    ]
    assert not missing, f"docs/config-reference.md lacks {missing}: run make docs"
