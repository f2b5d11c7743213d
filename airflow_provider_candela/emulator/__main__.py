"""Command line: ``candela-emulator`` / ``python -m airflow_provider_candela.emulator``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence

from airflow_provider_candela.emulator.config import CatalogError, EmulatorConfig, load_catalog
from airflow_provider_candela.emulator.state import parse_fault

__all__ = ["build_parser", "config_from_args", "main"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, except where there is none to show (``None`` or an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default == []:
            return action.help or ""
        return super()._get_help_string(action) or ""


def build_parser() -> argparse.ArgumentParser:
    d = EmulatorConfig()
    parser = argparse.ArgumentParser(
        prog="candela-emulator",
        description="A local Candela (Gen A Sessions API) server for tests and demos. "
        "Test controls are under /_emulator/ (stats, reset, faults, tokens, expire_tokens, config, users).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--host", default=d.host, help="address to bind (keep it on loopback)")
    parser.add_argument("--port", type=int, default=d.port, help="port; 0 picks a free one")
    parser.add_argument("--username", default=d.username, help="primary user's name")
    parser.add_argument("--password", default=d.password, help="primary user's password")
    parser.add_argument("--client-id", default=d.client_id, help="OAuth2 client id")
    parser.add_argument("--client-secret", default=d.client_secret, help="OAuth2 client secret")
    parser.add_argument(
        "--access-token",
        default=d.access_token,
        help="personal access token (acts as the primary user); '' = none",
    )
    parser.add_argument("--token-ttl", type=float, default=d.token_ttl, help="access token lifetime, seconds")
    parser.add_argument(
        "--slot-startup-seconds", type=float, default=d.slot_startup_seconds, help="time for a slot to reach HOST_READY"
    )
    parser.add_argument(
        "--slot-start-fails", action="store_true", help="new slots end in ERRORED (6) instead of HOST_READY"
    )
    parser.add_argument("--event-delay", type=float, default=d.event_delay, help="delay before each agent event, s")
    parser.add_argument(
        "--agent-chat-events",
        type=int,
        default=None,
        help="chat events per agent answer (default: from the prompt)",
    )
    parser.add_argument("--catalog", metavar="FILE", help="JSON catalogue: apps, models, slot_types, users, responses")
    parser.add_argument(
        "--fault", action="append", default=[], metavar="JSON", help="fault active from start-up (repeatable)"
    )
    parser.add_argument("--domain", default=d.domain, help="domain reported in metadata")
    parser.add_argument(
        "--log-level",
        default=d.log_level,
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="server log level; 'debug' also turns the access log on",
    )
    parser.add_argument("--ssl-certfile", metavar="PEM", help="serve HTTPS with this certificate (needs --ssl-keyfile)")
    parser.add_argument("--ssl-keyfile", metavar="PEM", help="private key of --ssl-certfile")
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> EmulatorConfig:
    config = EmulatorConfig(
        host=args.host,
        port=args.port,
        username=args.username,
        password=args.password,
        client_id=args.client_id,
        client_secret=args.client_secret,
        access_token=args.access_token or None,
        token_ttl=args.token_ttl,
        slot_startup_seconds=args.slot_startup_seconds,
        slot_start_fails=args.slot_start_fails,
        event_delay=args.event_delay,
        agent_chat_events=args.agent_chat_events,
        domain=args.domain,
        log_level=args.log_level,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        parser.error("--ssl-certfile and --ssl-keyfile go together: give both (HTTPS) or neither (HTTP)")
    if args.catalog:
        try:
            config.catalog = load_catalog(args.catalog)
        except CatalogError as exc:
            parser.error(str(exc))
    for i, text in enumerate(args.fault):
        try:
            raw = json.loads(text)
            parse_fault(raw, i)
        except ValueError as exc:
            parser.error(f"--fault {text!r}: {exc}")
        config.faults.append(raw)
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args, parser)
    from airflow_provider_candela.emulator.server import serve

    with contextlib.suppress(KeyboardInterrupt):
        serve(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
