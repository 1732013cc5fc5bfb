#!/usr/bin/env python3
"""`make demo`: write the mean face and an expressive face (OBJ + PLY) with the CLI's own code."""
from __future__ import annotations

import argparse
from pathlib import Path

from densemesh.cli import main as densemesh

EXPRESSIVE = ["jawOpen=0.45", "mouthSmile_L=0.8", "mouthSmile_R=0.6", "eyeBlink_L=1.0", "browInnerUp_R=0.7"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("demo_out"))
    out = ap.parse_args().out
    for ext in ("obj", "ply"):
        if densemesh(["model", "export", "--out", str(out / f"mean_face.{ext}")]):
            return 1
        args = ["model", "export", "--identity-seed", "7", "--out", str(out / f"expressive_face.{ext}")]
        for pair in EXPRESSIVE:
            args += ["--expression", pair]
        if densemesh(args):
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
