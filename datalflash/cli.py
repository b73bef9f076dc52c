"""The ``datalflash`` command (also ``python -m datalflash``)."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from datalflash.demo import run

    accuracy = run(workdir=args.workdir, epochs=args.epochs)
    return 0 if accuracy >= 0.9 else 1


def _verify(args: argparse.Namespace) -> int:
    from datalflash.errors import DataLFlashError
    from datalflash.store.verify import verify_store

    try:
        report = verify_store(args.store, progress=not args.quiet)
    except DataLFlashError as e:
        print(f"datalflash verify: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``datalflash`` command."""
    parser = argparse.ArgumentParser(prog="datalflash", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="convert real digits into a Zarr store and train on it")
    demo.add_argument("--workdir", help="keep the store here instead of a temporary directory")
    demo.add_argument("--epochs", type=int, default=15)
    demo.set_defaults(func=_demo)
    verify = commands.add_parser(
        "verify", help="check every chunk of a store against its checksums",
        description="Check every chunk of STORE; exit 0 if all are good, 1 if some are bad, 2 if STORE is not a usable store.",
    )
    verify.add_argument("store", help="path of the store")
    verify.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(func=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``datalflash`` command; returns its exit code."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
