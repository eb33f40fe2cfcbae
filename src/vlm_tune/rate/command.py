"""`vlm-tune rate`: the team rates in the browser, then exports the ratings or reports on them.

    vlm-tune rate serve TASKS.jsonl --db team.db [--host 127.0.0.1] [--port 8765] [--password PW]
    vlm-tune rate export --db team.db --output ratings.csv [--overwrite] [--include_removed]
    vlm-tune rate report --db team.db [--output DIR]

The password may also come from $VLM_TUNE_RATE_PASSWORD (a command line is visible to every user of the
machine in `ps`). See docs/rating.md.
"""

from __future__ import annotations

import csv
import ipaddress
import os
import socket
import sys
from pathlib import Path

from vlm_tune.core.cli_args import ArgParser
from vlm_tune.core.errors import UserError

PASSWORD_ENV = "VLM_TUNE_RATE_PASSWORD"


def _parser() -> ArgParser:
    parser = ArgParser(prog="vlm-tune rate", description="Rate model outputs or images as a team, in the browser.")
    commands = parser.add_subparsers(dest="action", required=True, parser_class=ArgParser, metavar="serve|export|report")
    serve = commands.add_parser("serve", help="serve the rating page for a task file")
    serve.add_argument("tasks", type=Path, help="task file (JSONL: image, prompt, responses, group)")
    serve.add_argument("--db", type=Path, required=True, help="SQLite ratings database (created if missing)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; "
                       "0.0.0.0 shares the page on the LAN: set a password)")
    serve.add_argument("--port", type=int, default=8765, help="port (default %(default)s)")
    serve.add_argument("--password", default=None, help=f"team password (or ${PASSWORD_ENV})")
    export = commands.add_parser("export", help="write the ratings builder's CSV")
    export.add_argument("--db", type=Path, required=True, help="ratings database")
    export.add_argument("--output", type=Path, required=True, help="CSV file to write")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    export.add_argument("--include_removed", action="store_true",
                        help="also export ratings of items the task file no longer lists")
    report = commands.add_parser("report", help="rank groups (image mode), agreement, raters: Markdown + HTML")
    report.add_argument("--db", type=Path, required=True, help="ratings database")
    report.add_argument("--output", type=Path, default=None, help="folder to write (default: DB-NAME-report beside the DB)")
    return parser


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args) -> int:
    try:
        from vlm_tune.rate.server import check_port, create_app, run_server
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastapi", "starlette", "uvicorn"):
            raise
        raise UserError(f"vlm-tune rate serve needs fastapi and uvicorn ({exc}): "
                        "pip install 'fastapi>=0.110' 'uvicorn>=0.29'") from None
    from vlm_tune.rate.store import RatingsStore
    from vlm_tune.rate.tasks import load_tasks

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be 1-65535, got {args.port}")
    password = args.password if args.password is not None else os.environ.get(PASSWORD_ENV) or None
    tasks = load_tasks(args.tasks)
    check_port(args.host, args.port)
    store = RatingsStore(args.db)
    sync = store.sync(tasks)
    print(f"{len(tasks.items)} items ({tasks.mode} mode) from {args.tasks}; ratings in {args.db}", flush=True)
    if sync.changed:
        print(f"the task file changed since it was last served: {len(sync.added)} item(s) added (offered to raters), "
              f"{len(sync.removed)} removed now, {sync.removed_total} removed in all (their ratings are kept; "
              "export leaves them out unless --include_removed)", flush=True)
    if not _is_loopback(args.host) and not password:
        print(f"warning: listening on {args.host} without a password: anyone who can reach this machine can rate "
              f"and read the ratings; pass --password (or set ${PASSWORD_ENV})", file=sys.stderr, flush=True)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"rate at http://{shown_host}:{args.port}/   team status at http://{shown_host}:{args.port}/status   "
          "(Ctrl+C stops)", flush=True)
    if args.host in ("0.0.0.0", "::"):
        print(f"share on the LAN: http://{socket.gethostname()}:{args.port}/ (or this machine's address)", flush=True)
    run_server(create_app(store, tasks.mode, password), args.host, args.port)
    return 0


def export(args) -> int:
    from vlm_tune.rate.export import export_csv
    from vlm_tune.rate.store import RatingsStore

    result = export_csv(RatingsStore(args.db, create=False), args.output, args.overwrite, args.include_removed)
    left_out = (f"; {result.removed_left_out} rating(s) of removed items left out (--include_removed adds them)"
                if result.removed_left_out else "")
    print(f"wrote {result.path}: {result.rows} rows, {result.raters} rater(s), {result.items} item(s){left_out}")
    # the builder refuses images outside the CSV's folder unless told (no silent ../ embedding)
    outside = any(row["image"].startswith("../") or Path(row["image"]).is_absolute()
                  for row in csv.DictReader(Path(result.path).open(encoding="utf-8")))
    flag = " --allow_outside_images" if outside else ""
    print(f"next: python -m data_builders.ratings --ratings {result.path} --output DIR{flag}")
    return 0


def report(args) -> int:
    from vlm_tune.rate.report import build_report
    from vlm_tune.rate.report_render import write_report
    from vlm_tune.rate.store import RatingsStore

    store = RatingsStore(args.db, create=False)
    output = args.output or args.db.parent / f"{args.db.stem}-report"
    data = build_report(store)
    if not data["ratings"]:
        raise UserError(f"{args.db}: no ratings yet, nothing to report")
    markdown, page = write_report(data, output)
    print(f"wrote {markdown} and {page}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    return {"serve": serve, "export": export, "report": report}[args.action](args)


if __name__ == "__main__":
    from vlm_tune.core.errors import run_command

    sys.exit(run_command(main))
