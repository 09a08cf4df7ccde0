"""The table every run prints, and the JSON file it leaves in bench/results/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Figure:
    """One measured figure beside the limit it is compared with, measured in the same run."""

    scenario: str
    name: str
    value: float
    unit: str
    limit_name: str
    limit: float
    target: str
    met: bool | None  # None: the issue sets no target for this figure

    @property
    def ratio(self) -> float:
        return self.value / self.limit if self.limit else float("nan")


def _number(value: float, unit: str) -> str:
    if isinstance(value, int):  # a count
        return f"{value:,} {unit}".rstrip()
    return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def table(figures: list[Figure]) -> str:
    header = ("scenario", "figure", "value", "limit (same run)", "ratio", "target", "")
    rows = [
        (
            f.scenario,
            f.name,
            _number(f.value, f.unit),
            f"{_number(f.limit, f.unit)} {f.limit_name}",
            f"{f.ratio:.2f}",
            f.target,
            {True: "ok", False: "MISSED", None: ""}[f.met],
        )
        for f in figures
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [_line(header, widths), _line(tuple("-" * w for w in widths), widths)]
    lines += [_line(row, widths) for row in rows]
    return "\n".join(lines)


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def write_results(figures: list[Figure], settings: Mapping[str, object], kind: str) -> Path:
    """bench/results/<date>-<kind>.json: one file per day and kind of run (database, and
    whether --quick), so that the PostgreSQL and SQLite runs of a day both stay."""
    RESULTS.mkdir(exist_ok=True)
    now = datetime.now(UTC)
    path = RESULTS / f"{now:%Y-%m-%d}-{kind}.json"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 (git from PATH, as a developer runs it)
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    document = {
        "when": now.isoformat(timespec="seconds"),
        "commit": commit,
        "machine": machine(),
        "settings": settings,
        "figures": [{**asdict(f), "ratio": round(f.ratio, 3)} for f in figures],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
