"""Make flakiness visible: run the fault drills and multi-process tests many times, count.

    python -m harness.soak [--runs 20] [--hog] [pytest paths or -k expressions ...]

One pytest session repeats the whole selection `--runs` times in order (pytest-repeat,
session scope), so each round sees the state earlier rounds left, as a long-running
suite would. `--hog` keeps one core busy with Debian's stress-ng for the whole soak, as
a shared CI machine often is. The table at the end gives each test's pass count; the
exit status is 0 only if every run of every test passed.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

DEFAULT_SELECTION = [
    "tests/test_fault_drills.py",
    "tests/test_provisioning_faults.py",
    "tests/test_workers.py",
    "tests/test_process.py",
]
# pytest-repeat names the k-th of n runs `test[...-k-n]` or `test[k-n]`.
REPEAT_SUFFIX = re.compile(r"(?:\[|-)(\d+)-(\d+)\]$")


def test_name(case: ET.Element) -> tuple[str, bool]:
    """The test's name without its repeat suffix, and whether this run passed."""
    name = f"{case.get('classname', '')}::{case.get('name', '')}"
    match = REPEAT_SUFFIX.search(name)
    if match:
        base = name[: match.start()]
        name = base + "]" if match.group(0).startswith("-") else base
    failed = any(child.tag in ("failure", "error") for child in case)
    skipped = any(child.tag == "skipped" for child in case)
    return name, not failed and not skipped


def first_failure_line(case: ET.Element) -> str | None:
    for child in case:
        if child.tag in ("failure", "error", "skipped"):
            return (child.get("message") or child.tag).splitlines()[0][:120]
    return None


@contextlib.contextmanager
def cpu_hog(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    if shutil.which("stress-ng") is None:
        sys.exit("--hog needs stress-ng (Debian package stress-ng; make soak HOG=1 installs it)")
    hog = subprocess.Popen(
        ["stress-ng", "--cpu", "1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    print("CPU hog: stress-ng --cpu 1 keeps one core busy", flush=True)
    try:
        yield
    finally:
        hog.terminate()
        hog.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each test (default 20)")
    parser.add_argument("--hog", action="store_true", help="keep one core busy meanwhile")
    parser.add_argument("selection", nargs="*", help="pytest paths (default: the drills)")
    # Anything else (-k EXPR, -x …) goes to pytest as given.
    args, pytest_options = parser.parse_known_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    selection = [*(args.selection or DEFAULT_SELECTION), *pytest_options]

    with tempfile.TemporaryDirectory() as scratch, cpu_hog(args.hog):
        report = Path(scratch) / "soak.xml"
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                f"--count={args.runs}",
                "--repeat-scope=session",
                f"--junitxml={report}",
                *selection,
            ],
            check=False,
        )
        elapsed = time.monotonic() - started
        if not report.exists():
            print("pytest wrote no report: see its output above", file=sys.stderr)
            return 2
        # Our own pytest wrote it, a moment ago.
        cases = list(ET.parse(report).getroot().iter("testcase"))  # noqa: S314

    runs: Counter[str] = Counter()
    passes: Counter[str] = Counter()
    failures: dict[str, list[str]] = {}
    for case in cases:
        name, passed = test_name(case)
        runs[name] += 1
        passes[name] += passed
        if not passed:
            failures.setdefault(name, []).append(first_failure_line(case) or "failed")

    width = max((len(name) for name in runs), default=4)
    print(f"\nsoak: {args.runs} runs each{' with a CPU hog' if args.hog else ''}, {elapsed:.0f} s")
    print(f"{'test':<{width}}  passed")
    print(f"{'-' * width}  ------")
    for name in sorted(runs):
        print(f"{name:<{width}}  {passes[name]}/{runs[name]}")
    for name, reasons in failures.items():
        print(f"\n{name} failed {len(reasons)} time(s):")
        for reason, count in Counter(reasons).most_common():
            print(f"  {count} × {reason}")
    all_passed = all(passes[name] == runs[name] for name in runs) and bool(runs)
    return 0 if all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
