"""How ``data/photos/`` was made: free-licensed photographs from Debian packages, resized to JPEG.

Run once by a maintainer (needs ``apt-get``; the course itself never runs it)::

    python scripts/vendor_photos.py --download /tmp/debs     # apt-get download + dpkg -x, then vendor
    python scripts/vendor_photos.py /tmp/debs                 # vendor from packages already extracted

``/tmp/debs/<package>/`` must hold the package's files as ``dpkg -x`` lays them out. Every
photograph in :data:`SELECTION` is rotated upright (KPhotoAlbum's demo album stores the
rotation in its ``index.xml``, not in EXIF), resized so that its long side is at most
1024 px, and written as a baseline JPEG (quality 90, metadata stripped) with one
``manifest.json`` entry: source package and version, original file, author, licence (from the
package's ``copyright`` file and upstream metadata), scene tags, group (photos of one scene or
event, which must share a split), size and SHA-256.

What was looked at and left out (all from Debian 12 "bookworm"):

* kept, photographs only: ``plasma-workspace-wallpapers`` (11 of 30 wallpapers; the others are
  renders, illustrations or the low-poly "Volna"), ``lxqt-themes`` (11 of 23 wallpapers; the
  rest are logos and abstract shapes), ``kphotoalbum`` (23 of the 24 demo-album photos;
  ``bar55_2`` is a near-duplicate of ``bar55`` and would leak across splits).
* no photographs (illustrations, renders, patterns): ``gnome-backgrounds``, ``ukui-wallpapers``,
  ``sway-backgrounds``, ``desktop-base``, ``xfdesktop4-data``, ``lxde-common``, ``eterm``,
  ``digikam-data``, ``cinnamon-desktop-data``, ``kdegames-mahjongg-data-kf5``.
* never used, reserved for evaluation outside the project: ``mate-backgrounds`` and every
  ``lomiri-wallpapers*`` package.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

LONG_SIDE = 1024
QUALITY = 90
FORBIDDEN = ("mate-backgrounds", "lomiri-wallpapers")

PLASMA = "usr/share/wallpapers/{}/contents/images/2560x1600.jpg"
LXQT = "usr/share/lxqt/wallpapers/{}"
KPA = "usr/share/kphotoalbum/demo/{}"
PLASMA_LICENCE = ("LGPL-3.0 (upstream metadata.json); Debian copyright: GPL-2.0-or-later "
                  "(KDE Visual Design Group)")
LXQT_LICENCE = "CC-BY-SA-3.0 (usr/share/lxqt/wallpapers/License)"
KPA_LICENCE = "GPL-2.0-or-later (Debian copyright of kphotoalbum)"
KPA_AUTHOR = "Jesper K. Pedersen and the KPhotoAlbum team (demo album)"
#: Photos of one scene, subject or event share a split (the demo album's own labels in its index.xml).
GROUPS = {"grand_canyon_1": "grand_canyon", "grand_canyon_2": "grand_canyon", "grand_canyon_3": "grand_canyon",
          "donna_2": "donna", "spiff_2": "spiff", "pool_2": "pool", "skagen_2": "skagen",
          "new_wave_1": "new_wave", "new_wave_2": "new_wave", "jesper_2": "jesper"}

# (name, package, original file, author, licence, rotate clockwise in degrees, scene tags)
SELECTION: list[tuple[str, str, str, str, str, int, tuple[str, ...]]] = [
    ("by_the_water", "plasma-workspace-wallpapers", PLASMA.format("BytheWater"), "Maciej Wiklo", PLASMA_LICENCE, 0,
     ("water", "sky", "backlit")),
    ("cold_ripple", "plasma-workspace-wallpapers", PLASMA.format("ColdRipple"), "Risto Saukonpää", PLASMA_LICENCE, 0,
     ("water", "sky", "high_key", "landscape")),
    ("colorful_cups", "plasma-workspace-wallpapers", PLASMA.format("ColorfulCups"), "Dmitri Popov", PLASMA_LICENCE, 0,
     ("objects",)),
    ("darkest_hour", "plasma-workspace-wallpapers", PLASMA.format("DarkestHour"), "Risto Saukonpää", PLASMA_LICENCE, 0,
     ("water", "sky", "night", "low_key", "landscape")),
    ("evening_glow", "plasma-workspace-wallpapers", PLASMA.format("EveningGlow"), "Ian Hex", PLASMA_LICENCE, 0,
     ("water", "sky", "backlit", "high_contrast", "landscape", "objects")),
    ("fallen_leaf", "plasma-workspace-wallpapers", PLASMA.format("FallenLeaf"), "Martin Klapetek", PLASMA_LICENCE, 0,
     ("foliage", "macro")),
    ("grey_facade", "plasma-workspace-wallpapers", PLASMA.format("Grey"), "Sigi Sagi", PLASMA_LICENCE, 0,
     ("architecture", "monochrome", "high_contrast")),
    ("kite", "plasma-workspace-wallpapers", PLASMA.format("Kite"), "Risto Saukonpää", PLASMA_LICENCE, 0,
     ("sky", "objects")),
    ("one_stands_out", "plasma-workspace-wallpapers", PLASMA.format("OneStandsOut"), "Risto Saukonpää",
     PLASMA_LICENCE, 0, ("foliage", "macro")),
    ("forest_path", "plasma-workspace-wallpapers", PLASMA.format("Path"), "Risto Saukonpää", PLASMA_LICENCE, 0,
     ("foliage", "landscape")),
    ("summer_1am", "plasma-workspace-wallpapers", PLASMA.format("summer_1am"), "Risto Saukonpää", PLASMA_LICENCE, 0,
     ("water", "sky", "night", "landscape")),
    ("butterfly_light", "lxqt-themes", LXQT.format("Butterfly-Kenneth-Wimer.jpg"), "Kenneth Wimer", LXQT_LICENCE, 0,
     ("animal", "flowers", "high_key", "macro")),
    ("valendas", "lxqt-themes", LXQT.format("Valendas.png"), "LXQt Project Team (no individual credit)",
     LXQT_LICENCE, 0, ("sky", "landscape", "backlit", "high_contrast", "low_key")),
    ("after_the_rain", "lxqt-themes", LXQT.format("after-the-rain.jpg"), "stefonarch", LXQT_LICENCE, 0,
     ("sky", "backlit", "high_contrast", "low_key", "landscape")),
    ("apple_flower", "lxqt-themes", LXQT.format("appleflower.png"), "stefonarch", LXQT_LICENCE, 0,
     ("flowers", "foliage", "macro")),
    ("beam", "lxqt-themes", LXQT.format("beam.png"), "stefonarch", LXQT_LICENCE, 0,
     ("sky", "landscape", "backlit", "high_contrast", "low_key")),
    ("butterfly_dark", "lxqt-themes", LXQT.format("butterfly.png"), "stefonarch", LXQT_LICENCE, 0,
     ("animal", "flowers", "low_key", "macro")),
    ("cloud", "lxqt-themes", LXQT.format("cloud.png"), "LXQt Project Team (no individual credit)", LXQT_LICENCE, 0,
     ("sky",)),
    ("drop", "lxqt-themes", LXQT.format("drop.png"), "stefonarch", LXQT_LICENCE, 0, ("foliage", "macro", "water")),
    ("flowers", "lxqt-themes", LXQT.format("flowers.png"), "stefonarch", LXQT_LICENCE, 0, ("flowers", "foliage")),
    ("fog", "lxqt-themes", LXQT.format("fog.jpg"), "stefonarch", LXQT_LICENCE, 0, ("sky", "landscape", "high_key")),
    ("green_hills", "lxqt-themes", LXQT.format("this-is-not-windows.jpg"), "stefonarch", LXQT_LICENCE, 0,
     ("sky", "landscape", "foliage")),
    ("anne_helene", "kphotoalbum", KPA.format("anne_helene.jpg"), KPA_AUTHOR, KPA_LICENCE, 0,
     ("people", "skin", "sky", "water")),
    ("bar55", "kphotoalbum", KPA.format("bar55.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("people", "skin", "interior", "night")),
    ("blackie", "kphotoalbum", KPA.format("blackie.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("interior", "objects", "animal")),
    ("cold_water", "kphotoalbum", KPA.format("cold_water.jpg"), KPA_AUTHOR, KPA_LICENCE, 0,
     ("people", "sky", "water", "landscape")),
    ("donna", "kphotoalbum", KPA.format("donna.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("animal", "foliage", "landscape")),
    ("donna_2", "kphotoalbum", KPA.format("donna_2.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("animal", "interior")),
    ("grand_canyon_1", "kphotoalbum", KPA.format("grand_canyon_1.jpg"), KPA_AUTHOR, KPA_LICENCE, 180,
     ("people", "skin", "sky", "landscape")),
    ("grand_canyon_2", "kphotoalbum", KPA.format("grand_canyon_2.jpg"), KPA_AUTHOR, KPA_LICENCE, 0,
     ("people", "sky", "landscape", "backlit", "high_contrast")),
    ("grand_canyon_3", "kphotoalbum", KPA.format("grand_canyon_3.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("sky", "landscape")),
    ("jesper", "kphotoalbum", KPA.format("jesper.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("people", "skin", "low_key")),
    ("jesper_2", "kphotoalbum", KPA.format("jesper_2.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("people", "skin", "interior")),
    ("new_wave_1", "kphotoalbum", KPA.format("new_wave_1.jpg"), KPA_AUTHOR, KPA_LICENCE, 90,
     ("people", "skin", "interior")),
    ("new_wave_2", "kphotoalbum", KPA.format("new_wave_2.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("people", "skin", "interior")),
    ("pool", "kphotoalbum", KPA.format("pool.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("people", "interior", "objects")),
    ("pool_2", "kphotoalbum", KPA.format("pool_2.jpg"), KPA_AUTHOR, KPA_LICENCE, 270,
     ("people", "interior", "objects", "low_key")),
    ("qt_logo", "kphotoalbum", KPA.format("qt-logo.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("people", "skin", "interior")),
    ("skagen", "kphotoalbum", KPA.format("skagen.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("water", "sky", "landscape")),
    ("skagen_2", "kphotoalbum", KPA.format("skagen_2.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("water", "sky", "landscape")),
    ("snow", "kphotoalbum", KPA.format("snow.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("snow", "sky", "landscape", "high_key")),
    ("spiff", "kphotoalbum", KPA.format("spiff.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("animal", "foliage")),
    ("spiff_2", "kphotoalbum", KPA.format("spiff_2.jpg"), KPA_AUTHOR, KPA_LICENCE, 0, ("animal", "interior", "objects")),
    ("sunset", "kphotoalbum", KPA.format("sunset.jpg"), KPA_AUTHOR, KPA_LICENCE, 0,
     ("sky", "backlit", "high_contrast", "low_key", "landscape")),
    ("wayne", "kphotoalbum", KPA.format("wayne.jpg"), KPA_AUTHOR, KPA_LICENCE, 90, ("people", "interior")),
]


def download(root: Path) -> None:
    """``apt-get download`` the packages of :data:`SELECTION` into ``root`` and ``dpkg -x`` each."""
    root.mkdir(parents=True, exist_ok=True)
    packages = sorted({row[1] for row in SELECTION})
    subprocess.run(["apt-get", "download", *packages], cwd=root, check=True)
    for pkg in packages:
        deb = next(root.glob(f"{pkg}_*.deb"))
        subprocess.run(["dpkg", "-x", str(deb), str(root / pkg)], check=True)


def package_version(root: Path, pkg: str) -> str:
    debs = sorted(root.glob(f"{pkg}_*.deb"))
    if debs:
        return subprocess.run(["dpkg-deb", "-f", str(debs[0]), "Version"], capture_output=True, text=True,
                              check=True).stdout.strip()
    return "unknown"


def vendor(root: Path, out: Path) -> list[dict]:
    """Write every photo of :data:`SELECTION` to ``out`` and return the manifest rows."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, pkg, original, author, licence, rotate, tags in SELECTION:
        assert not pkg.startswith(FORBIDDEN), pkg
        with Image.open(root / pkg / original) as im:
            img = im.convert("RGB")
        if rotate:
            img = img.rotate(-rotate, expand=True)  # PIL rotates counter-clockwise
        img.thumbnail((LONG_SIDE, LONG_SIDE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=QUALITY, optimize=True)
        blob = buf.getvalue()
        (out / f"{name}.jpg").write_bytes(blob)
        rows.append({"file": f"{name}.jpg", "name": name, "package": pkg,
                     "package_version": package_version(root, pkg), "original": "/" + original,
                     "author": author, "licence": licence, "rotated_cw": rotate, "tags": list(tags),
                     "group": GROUPS.get(name, name),
                     "width": img.width, "height": img.height, "bytes": len(blob),
                     "sha256": hashlib.sha256(blob).hexdigest()})
    (out / "manifest.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="folder holding <package>/ trees extracted with dpkg -x")
    parser.add_argument("--download", action="store_true", help="apt-get download and extract the packages first")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "photos")
    args = parser.parse_args(argv)
    if args.download:
        download(args.root)
    rows = vendor(args.root, args.out)
    total = sum(r["bytes"] for r in rows)
    print(f"vendored {len(rows)} photos into {args.out} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
