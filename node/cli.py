"""The ``pithnode`` command line: parsing, dispatch and the mapping of errors to exit codes.

Exit codes: 0 success, 1 a check failed (``verify``), 2 unusable input or usage, 3 no node
running (commands that talk to the daemon), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import IO

from pithnode.protocol.errors import InputError, ProtocolError

from . import cli_attest, cli_protocol, cli_pull, cli_query, cli_run, cli_store, cli_synth
from .cli_context import Context
from .errors import CliError, NodeError

Handler = Callable[[argparse.Namespace, Context], int]
COMMAND_MODULES = [cli_protocol, cli_store, cli_synth, cli_query, cli_run, cli_pull,
                   cli_attest]


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() controls streams and codes."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pithnode", description="A mirror and attestation node for the "
                     "Pith Open Graph.")
    parser.add_argument("--network", metavar="FILE",
                        help="network spec (default: the shipped configs/network.toml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None,
         stderr: IO[str] | None = None, stdin: IO[bytes] | None = None) -> int:
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    if stdin is None and stdout is None:
        stdin = sys.stdin.buffer
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(out)
            return 2
        ctx = Context(stdout=out, stderr=err, stdin=stdin, network=args.network,
                      debug=args.debug)
        handler: Handler = args.handler
        return handler(args, ctx)
    except CliError as exc:
        return _report(err, str(exc), exc.hint, exc.code, args)
    except InputError as exc:
        return _report(err, str(exc), None, 2, args)
    except (ProtocolError, NodeError) as exc:
        return _report(err, str(exc), None, 2, args)
    except KeyboardInterrupt:
        err.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return 0


def _report(err: IO[str], message: str, hint: str | None, code: int,
            args: argparse.Namespace | None) -> int:
    if args is not None and args.debug:
        traceback.print_exc(file=err)
    line = f"error: {message}"
    if hint:
        line += f" ({hint})"
    err.write(line + "\n")
    return code


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
