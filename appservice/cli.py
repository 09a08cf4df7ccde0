"""Command line: `gatekeeper -c config.yaml` runs the service; subcommands do one-off jobs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path

from gatekeeper.appservice.config import Config, ConfigError, load_config
from gatekeeper.appservice.homeserver.registration_file import generate_registration
from gatekeeper.appservice.runtime.logging_setup import configure_logging
from gatekeeper.appservice.runtime.memory import tune_malloc
from gatekeeper.appservice.runtime.program import EXIT_CONFIG, Gatekeeper, StartupError

log = logging.getLogger("gatekeeper")

# A worker process that died is started again after this pause (a crash loop stays slow).
RESTART_DELAY_SECONDS = 2.0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: an option given before the subcommand must not be reset by the
    # subcommand's default; _parse() fills in the defaults once.
    common.add_argument(
        "-c", "--config", type=Path, default=argparse.SUPPRESS, help="the config file"
    )
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument(
        "--workers",
        type=int,
        default=argparse.SUPPRESS,
        metavar="N",
        help="run N processes sharing the web port (PostgreSQL only); one of them is active",
    )
    parser = argparse.ArgumentParser(
        prog="gatekeeper",
        description="Matrix sign-ups approved by admins in a room.",
        parents=[common, running],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('gatekeeper')}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", parents=[common, running], help="run the service (the default)")
    generate = commands.add_parser(
        "generate-registration",
        parents=[common],
        help="write registration.yaml for Synapse and put its tokens in the config",
    )
    generate.add_argument(
        "-o", "--output", type=Path, default=Path("registration.yaml"), help="where to write it"
    )
    return parser


def _fail(message: str, exit_code: int) -> int:
    # Every line, so that each of several problems is found by a grep of a combined log.
    for line in message.splitlines():
        print(f"gatekeeper: {line}", file=sys.stderr)
    return exit_code


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _serve(gatekeeper: Gatekeeper) -> None:
    stop = _stop_on_signals()
    try:
        # A signal also ends a start-up that is still waiting, e.g. for the homeserver.
        starting = asyncio.create_task(gatekeeper.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("Stopping on signal during start-up")
            starting.cancel()
            await asyncio.wait([starting])
            return
        stopping.cancel()
        starting.result()
        await stop.wait()
        log.info("Stopping on signal")
    finally:
        await gatekeeper.stop()


async def _supervise(config_file: Path, config: Config, workers: int) -> int:
    """Run `workers` processes; restart one that dies, stop them all on a signal."""
    stop = _stop_on_signals()
    command = [sys.executable, "-m", "gatekeeper", "-c", str(config_file), "run"]

    async def spawn(index: int) -> asyncio.subprocess.Process:
        # Each process keeps its own metrics port, so every one of them can be scraped.
        env = {**os.environ, "GATEKEEPER_METRICS__PORT": str(config.metrics.port + index)}
        return await asyncio.create_subprocess_exec(*command, env=env)

    processes = [await spawn(index) for index in range(workers)]
    log.info("Started %d worker processes", workers)
    while not stop.is_set():
        exits = {asyncio.create_task(process.wait()): i for i, process in enumerate(processes)}
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({*exits, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in exits:
            task.cancel()
        stopping.cancel()
        for task in done - {stopping}:
            index = exits[task]
            code = processes[index].returncode
            if code == EXIT_CONFIG:
                stop.set()
                break
            log.warning("Worker %d exited with %s; starting it again", index, code)
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            processes[index] = await spawn(index)
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    codes = [await process.wait() for process in processes]
    return max(codes, default=0)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    args = _parser().parse_args(argv)
    args.config = getattr(args, "config", Path("config.yaml"))
    args.workers = getattr(args, "workers", 1)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        if args.command == "generate-registration":
            generate_registration(args.config, args.output)
            print(f"Wrote {args.output}; add it to Synapse's app_service_config_files.")
            return 0
        config = load_config(args.config)
    except ConfigError as error:
        return _fail("\n".join(f"config error: {p}" for p in error.problems), EXIT_CONFIG)
    configure_logging(config.logging, config.secrets())
    if args.workers < 1:
        return _fail("--workers: must be at least 1", EXIT_CONFIG)
    if args.workers > 1:
        if config.database.url.startswith("sqlite:"):
            return _fail(
                "config error: database.url: several workers need PostgreSQL "
                "(SQLite allows one process)",
                EXIT_CONFIG,
            )
        return asyncio.run(_supervise(args.config, config, args.workers))
    tune_malloc()
    try:
        asyncio.run(_serve(Gatekeeper(config)))
    except StartupError as error:
        log.debug("Start-up failed", exc_info=True)
        return _fail(str(error), error.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
