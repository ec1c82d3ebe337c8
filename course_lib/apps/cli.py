"""Small commands of the foundation lesson: doctor, data, notebooks."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .. import config, grammar, oracle, world
from ..config import no_network
from ..util.figures import write_figures
from ..util.notebooks import README, NotebookError, generate
from ..viz import course_map
from .docs import generate_docs
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
                                     description="The photo collection. prepare: read every photo once (checks that the "
                                                 "vendored files and the packages' sample photos are there); manifest: "
                                                 "print every photo's source, licence and split; world: list the "
                                                 "collection with splits, "
                                                 "scene counts and phrasing counts; oracle: the oracle study (global "
                                                 "affine, luma curve and bilateral-grid fits of every edit family on "
                                                 "the test photos) -> outputs/oracle/*.md and *.json, never "
                                                 "overwriting a file.")
    parser.add_argument("action", choices=["prepare", "manifest", "world", "oracle"])
    parser.add_argument("--out", default=None,
                        help="folder for 'oracle' (default outputs/oracle)")
    parser.add_argument("--photos", type=int, default=None,
                        help="oracle: use the first N test photos (default all; FAST mode 3)")
    parser.add_argument("--size", type=int, default=None,
                        help="oracle: shorter side in pixels (default 256; FAST mode 128)")
    parser.add_argument("--fast", action="store_true", help="oracle: the FAST variant whatever COURSE_MODE says")
    args = parser.parse_args(argv)
    if args.action == "manifest":
        print(json.dumps([dataclasses.asdict(p) for p in world.photos()], indent=1))
        return 0
    if args.action == "world":
        for split in world.WORLD_SPLITS:
            names = world.photo_names(split)
            print(f"{split:<5} {len(names):>2} photos: {', '.join(names)}")
            print(f"      scenes: {world.scene_counts(split)}")
        counts = world.phrasing_counts()
        print(f"families: {len(world.WORLD_FAMILIES)} ({len(world.NEW_FAMILIES)} new); training patterns per family "
              f"and direction: {min(c['train'] for c in counts.values())}-{max(c['train'] for c in counts.values())}; "
              f"held-out synonyms: {len(grammar.HELDOUT_SYNONYMS)} words")
        return 0
    if args.action == "oracle":
        fast = args.fast or config.is_fast()
        names = world.photo_names("test")
        n = args.photos if args.photos is not None else (3 if fast else len(names))
        size = args.size if args.size is not None else (128 if fast else 256)
        result = oracle.oracle_study(photos=names[:n], size=size)
        paths = oracle.write(result, args.out)
        print(oracle.markdown(result))
        print("wrote " + ", ".join(map(str, paths)))
        return 0
    for name in world.photo_names():
        world.load_photo(name, 8)  # raises if a photo is missing
    counts = {s: len(world.photo_names(s)) for s in world.WORLD_SPLITS}
    print(f"data: {len(world.photo_names())} photos ({', '.join(f'{n} {s}' for s, n in counts.items())}), "
          f"vendored in {world.PHOTO_DIR} or read from installed packages")
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
        results += generate_docs(check=args.check)
    except NotebookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        for r in results:
            print(r, file=sys.stderr)
        print("notebooks: in sync with solutions/" if not results else f"notebooks: {len(results)} problem(s)")
        return 1 if results else 0
    if write_course_map():
        results.append(str(COURSE_MAP_PNG))
    results += write_figures()
    print(f"notebooks: wrote {len(results)} file(s)" + "".join(f"\n  {r}" for r in results))
    return 0


#: The README's course map (lessons -> library modules -> shipped weights), drawn by ``viz.course_map``.
COURSE_MAP_PNG = config.REPO_ROOT / "data" / "figures" / "course_map.png"


def write_course_map(path: Path = COURSE_MAP_PNG) -> bool:
    """Draw the course map and write it to ``path`` if its bytes changed; True if written."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    fig = course_map(weights_dir=config.WEIGHTS_DIR)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    new = buf.getvalue()
    if path.is_file() and path.read_bytes() == new:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(new)
    return True
