"""Command line: `gatekeeper -c config.yaml` runs the service; subcommands do one-off jobs."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from appservice.config import ConfigError, load_config
from appservice.logging_setup import configure_logging
from appservice.program import EXIT_CONFIG, Gatekeeper, StartupError
from appservice.registration import generate_registration

log = logging.getLogger("gatekeeper")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c", "--config", type=Path, default=Path("config.yaml"), help="the config file"
    )
    parser = argparse.ArgumentParser(
        prog="gatekeeper",
        description="Matrix sign-ups approved by admins in a room.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="run the service (the default)")
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
    print(f"gatekeeper: {message}", file=sys.stderr)
    return exit_code


async def _serve(gatekeeper: Gatekeeper) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await gatekeeper.start()
        await stop.wait()
        log.info("Stopping on signal")
    finally:
        await gatekeeper.stop()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate-registration":
            generate_registration(args.config, args.output)
            print(f"Wrote {args.output}; add it to Synapse's app_service_config_files.")
            return 0
        config = load_config(args.config)
    except ConfigError as error:
        return _fail("\n".join(f"config error: {p}" for p in error.problems), EXIT_CONFIG)
    configure_logging(config.logging, config.secrets())
    try:
        asyncio.run(_serve(Gatekeeper(config)))
    except StartupError as error:
        log.debug("Start-up failed", exc_info=True)
        return _fail(str(error), error.exit_code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
