"""The ``tooti`` command: argument parsing and process set-up only; the work lives elsewhere."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio


def _add_file(p: argparse.ArgumentParser, *, required: bool) -> None:
    # `-file` (single dash) matches the documented usage; `--file` is accepted too.
    p.add_argument("-file", "--file", "-f", dest="file", required=required, metavar="PATH")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tooti", description="A peer-to-peer LLM inference network.")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("TOOTI_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR (env TOOTI_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default=os.environ.get("TOOTI_LOG_FORMAT", "text"),
        help="text, or json: one object per line (env TOOTI_LOG_FORMAT)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        default=os.environ.get("TOOTI_ACCESS_LOG") == "1",
        help="gateway: one INFO line per request on logger tooti.access (env TOOTI_ACCESS_LOG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config-check", help="validate a node or gateway YAML file")
    _add_file(p, required=True)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--kind", choices=["node", "gateway"], help="file kind (default: detected)")
    p.add_argument(
        "--require-env",
        action="store_true",
        help="unset ${VAR} references are errors, as at start-up (default: warnings)",
    )
    p.set_defaults(func=_cmd_config_check)

    node = sub.add_parser("node", help="run a node agent").add_subparsers(dest="action", required=True)
    p = node.add_parser("start", help="start a node beside a local inference backend")
    _add_file(p, required=True)
    p.set_defaults(func=_cmd_node_start)

    gw = sub.add_parser("gateway", help="run a gateway").add_subparsers(dest="action", required=True)
    p = gw.add_parser("start", help="start a gateway")
    _add_file(p, required=False)
    p.set_defaults(func=_cmd_gateway_start)

    p = sub.add_parser("up", help="gateway + node + backend on this machine, open development mode")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    p.add_argument("--p2p-port", type=int, default=4001, help="gateway libp2p port (default 4001)")
    p.add_argument("--backend", choices=["auto", "llamacpp", "loopback"], default="auto")
    p.add_argument("--data-dir", default=os.environ.get("TOOTI_HOME", os.path.expanduser("~/.tooti")))
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("status", help="show the nodes a gateway sees")
    p.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway base URL")
    p.add_argument("--api-key", default=os.environ.get("TOOTI_API_KEY"))
    p.add_argument(
        "--json", action="store_true", help="the gateway's JSON document (one per line with --watch)"
    )
    p.add_argument(
        "--watch",
        nargs="?",
        const=2.0,
        type=float,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    p.set_defaults(func=_cmd_status)

    from tooti import network_cli

    network_cli.register(sub)
    try:
        from tooti import admin_cli
    except ImportError:  # the accounts layer is optional for a node-only install
        admin_cli = None  # type: ignore[assignment]
    if admin_cli is not None:
        admin_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tooti import logs

    logs.setup(args.log_level, args.log_format)
    if not args.access_log:
        logging.getLogger("tooti.access").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


def _cmd_config_check(args: argparse.Namespace) -> int:
    from tooti.config import run_check

    return run_check(args.file, as_json=args.json, kind=args.kind, require_env=args.require_env)


def _load(kind: str, path: str | None):  # type: ignore[no-untyped-def]
    from tooti import config

    try:
        if kind == "node":
            return config.load_node_config(path or "node.yaml")
        return config.load_gateway_config(path) if path else config.GatewayConfig()
    except config.ConfigError as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as exc:
        print(f"cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _cmd_node_start(args: argparse.Namespace) -> int:
    from tooti import logs
    from tooti.node.agent import NamespaceRefused
    from tooti.node.run import run_node

    cfg = _load("node", args.file)

    async def _main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signals, nursery.cancel_scope)
            nursery.start_soon(logs.flush_loop)
            agent = await nursery.start(run_node, cfg)
            await agent.ready.wait()
            print(
                f"tooti node ready: peer={agent.host.get_id()} models={','.join(sorted(agent.models))}",
                flush=True,
            )

    try:
        trio.run(_main)
    except BaseException as exc:
        refused = _find(exc, NamespaceRefused)
        if refused is None:
            raise
        print(f"tooti node: refused by the network: {refused}; serving nothing", file=sys.stderr)
        return 3
    return 0


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    if isinstance(exc, kind):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kind)
            if found is not None:
                return found
    return None


def _cmd_gateway_start(args: argparse.Namespace) -> int:
    from tooti import config, logs
    from tooti.gateway.serve import serve_gateway

    cfg = _load("gateway", args.file)

    async def _main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signals, nursery.cancel_scope)
            nursery.start_soon(logs.flush_loop)
            started = await nursery.start(serve_gateway, cfg)
            print(
                f"tooti gateway ready: http={started.http_urls[0]} p2p={' '.join(started.p2p_addrs)}",
                flush=True,
            )

    failed = False
    try:
        trio.run(_main)
    except* config.ConfigError as group:
        failed = True
        for exc in group.exceptions:
            print(f"cannot start:\n{exc}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_up(args: argparse.Namespace) -> int:
    from tooti import logs
    from tooti.up import run_up

    async def _main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signals, nursery.cancel_scope)
            nursery.start_soon(logs.flush_loop)
            await run_up(port=args.port, p2p_port=args.p2p_port, backend=args.backend, data_dir=args.data_dir)
            nursery.cancel_scope.cancel()

    trio.run(_main)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from tooti.status import show_status

    return show_status(args.gateway, api_key=args.api_key, as_json=args.json, watch=args.watch)


async def _cancel_on_signals(scope: trio.CancelScope) -> None:
    """SIGINT/SIGTERM cancel everything: shutdown is cancellation flowing down."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            logging.getLogger("tooti").info("shutting down")
            scope.cancel()
            return


if __name__ == "__main__":
    sys.exit(main())
