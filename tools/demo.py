#!/usr/bin/env python3
"""`make demo`: reconstruct the bundled photo (scikit-image's astronaut, public domain) into
demo_out/ with the CLI's own code, and print the files written."""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from skimage import data

from densemesh.cli import main as densemesh


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    ap.add_argument("--refine", default="fast", choices=["none", "fast", "full"])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    photo = args.out / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    print(photo)
    return densemesh(["reconstruct", str(photo), "--out", str(args.out), "--refine", args.refine])


if __name__ == "__main__":
    raise SystemExit(main())
