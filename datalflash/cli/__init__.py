"""The ``datalflash`` command: convert, info, verify, bench, demo (see :mod:`datalflash.cli.main`)."""

from datalflash.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
