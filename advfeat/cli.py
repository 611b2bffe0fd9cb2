"""The `advfeat` command line: one subcommand per job, each a thin shell over a library call.

Every subcommand parses its flags here and calls one function elsewhere; bad input raises
UserError, printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from advfeat import __version__
from advfeat.errors import UserError


def _theory(args: argparse.Namespace) -> None:
    from advfeat.theory.figures import run

    summary = run(Path(args.out), dims=args.dims, seed=args.seed)
    print(summary["headline"])


def _add_theory(sub) -> None:
    p = sub.add_parser("theory", help="the Gaussian model of Section 4")
    p.add_argument("model", choices=["gaussian"], help="which theoretical model")
    p.add_argument("--out", required=True, help="folder for the figures and the JSON of numbers")
    p.add_argument("--dims", type=int, default=10, help="dimension of the d-dimensional example")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_theory)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="advfeat", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"advfeat {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_theory(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        print(f"advfeat: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("advfeat: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
