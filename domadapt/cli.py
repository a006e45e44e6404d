"""The ``domadapt`` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="domadapt", description="Domain adaptation for Keras models.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run the offline sunny-to-rainy demo (options: domadapt demo --help)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "demo":
        from domadapt import demo

        return demo.main(rest)
    parser.error(f"unknown command {args.command!r}")


if __name__ == "__main__":
    sys.exit(main())
