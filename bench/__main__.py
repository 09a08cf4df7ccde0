"""`python -m bench [scenario ...] [--sqlite] [--quick]`: start the stack, run the
scenarios, print the table and write bench/results/<date>-<database>.json."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

from bench.admin_room import admin_room
from bench.approve import approve
from bench.context import FULL, QUICK, Bench
from bench.encrypted_room import encrypted_room
from bench.hashing import login, signup
from bench.pages import pages
from bench.reads import user_info
from bench.refusals import refusals
from bench.report import Figure, machine, table, write_results
from bench.scale import scale
from bench.stack import running_stack

Scenario = Callable[[Bench], Awaitable[list[Figure]]]
DATABASE_LOCKED = "database is locked"

# In this order: the admin room's 10,000 requests and the scale's 100,000 come late, so
# they weigh on nothing else; the encrypted room last, since Gatekeeper keeps it.
SCENARIOS: dict[str, Scenario] = {
    "signup": signup,
    "login": login,
    "userinfo": user_info,
    "pages": pages,
    "refusals": refusals,
    "approve": approve,
    "admin-room": admin_room,
    "scale": scale,
    "encrypted-room": encrypted_room,
}


def _database_locked(log: list[str]) -> Figure:
    """SQLite's "database is locked" (a writer that waited too long) anywhere in
    Gatekeeper's log over the whole run: a request or a job failed on it."""
    locked = sum(DATABASE_LOCKED in line for line in log)
    return Figure(
        "whole run",
        f'"{DATABASE_LOCKED}" in Gatekeeper\'s logs',
        locked,
        "",
        "log lines",
        len(log),
        "= 0",
        locked == 0,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios",
        nargs="*",
        # argparse checks an empty nargs="*" default against the choices too.
        choices=[[], *SCENARIOS],
        metavar="SCENARIO",
        help=f"any of {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument(
        "--sqlite", action="store_true", help="Gatekeeper on SQLite, not PostgreSQL"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for development")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run Gatekeeper under pyinstrument and write its report to FILE",
    )
    return parser


async def run(
    args: argparse.Namespace, names: list[str]
) -> tuple[list[Figure], dict[str, dict[str, float]]]:
    """The figures, and the CPU time each scenario cost each process (where time goes)."""
    cpu: dict[str, dict[str, float]] = {}
    sizes = QUICK if args.quick else FULL
    profile = args.profile.resolve() if args.profile else None
    with tempfile.TemporaryDirectory(prefix="gatekeeper-bench-") as directory:
        print(f"Starting Synapse and Gatekeeper ({'SQLite' if args.sqlite else 'PostgreSQL'}) …")
        async with running_stack(Path(directory), args.sqlite, profile) as stack:
            bench = Bench(stack, sizes, idle_rss_mb=stack.rss_mb())
            for name in names:
                print(f"Running {name} …", flush=True)
                await stack.settle()
                stack.reset_peak_rss()
                cpu_before, started = await stack.cpu_seconds(), time.perf_counter()
                bench.figures += await SCENARIOS[name](bench)
                bench.figures.append(bench.peak_rss(name))
                cpu_after, wall = await stack.cpu_seconds(), time.perf_counter() - started
                cpu[name] = {k: round(cpu_after[k] - cpu_before[k], 1) for k in cpu_after}
                used = ", ".join(f"{k} {v:.1f} s" for k, v in cpu[name].items())
                print(f"  CPU time in {wall:.1f} s: {used}", flush=True)
            bench.figures.append(_database_locked(stack.log_lines()))
            return bench.figures, cpu


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = [name for name in SCENARIOS if name in args.scenarios] or list(SCENARIOS)
    load_at_start = machine()["load_average"]
    figures, cpu = asyncio.run(run(args, names))
    print()
    print(table(figures))
    about = machine()
    print(
        f"\n{about['cpu']}, {about['cores']} cores, load average {load_at_start} at the start,"
        f" {about['load_average']} at the end"
    )
    settings = {
        "load_average_at_start": load_at_start,
        "database": "sqlite" if args.sqlite else "postgres",
        "sizes": asdict(QUICK if args.quick else FULL),
        "scenarios": names,
        "cpu_seconds": cpu,
    }
    kind = f"{settings['database']}{'-quick' if args.quick else ''}"
    print(f"Results: {write_results(figures, settings, kind)}")
    return 0  # timings are never tests: a missed target is shown, not a failure


if __name__ == "__main__":
    sys.exit(main())
