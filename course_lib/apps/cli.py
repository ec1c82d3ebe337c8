"""Small commands of the foundation lesson: doctor, data, notebooks."""
from __future__ import annotations

import argparse
import json
import sys

from .. import data
from ..config import no_network
from ..util.notebooks import README, NotebookError, generate
from .doctor import report


def doctor_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib doctor",
                                     description="Print versions, device, mode and which optional hub weights "
                                                 "are present locally. Never touches the network.")
    parser.parse_args(argv)
    with no_network():
        print(report())
    return 0


def data_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib data",
                                     description="The embedded photos: write them as PNG with a manifest, "
                                                 "or print the manifest.")
    parser.add_argument("action", choices=["prepare", "manifest"], help="prepare: write data/photos; manifest: print JSON")
    parser.add_argument("--out", default=None, help="folder for 'prepare' (default data/photos)")
    args = parser.parse_args(argv)
    if args.action == "manifest":
        print(json.dumps(data.manifest(), indent=1))
        return 0
    out = data.prepare(args.out)
    rows = data.manifest()
    print(f"data: {len(rows)} photos in {out} "
          f"({sum(r['split'] == 'train' for r in rows)} train, {sum(r['split'] == 'heldout' for r in rows)} held out)")
    return 0


def notebooks_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib notebooks",
                                     description="Generate notebooks/ (student versions) from solutions/, "
                                                 "stripping outputs from both.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any student notebook drifted from its solution")
    args = parser.parse_args(argv)
    try:
        results = generate(check=args.check, readme=README)
    except NotebookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for r in results:
            print(r, file=sys.stderr)
        print("notebooks: in sync with solutions/" if not results else f"notebooks: {len(results)} problem(s)")
        return 1 if results else 0
    print(f"notebooks: wrote {len(results)} file(s)" + "".join(f"\n  {r}" for r in results))
    return 0
