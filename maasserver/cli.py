"""The ``maas-rpc`` command line."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the ``maas-rpc`` argument parser.

    :return: the parser.
    """
    parser = argparse.ArgumentParser(
        prog="maas-rpc",
        description="MAAS's region-cluster RPC system on Twisted AMP.",
    )
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``maas-rpc``.

    :param argv: the arguments, without the program name; ``sys.argv[1:]``
        when ``None``.
    :return: the exit status.
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
