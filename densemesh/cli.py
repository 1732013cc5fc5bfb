"""The ``densemesh`` command: argument parsing, messages and exit codes only.

Exit codes: 0 success (also "no face found"), 1 internal error, 2 bad usage or unreadable
input, 130 interrupted. Errors are one line on stderr; set DENSEMESH_DEBUG=1 for tracebacks.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from densemesh import __version__


class UsageError(Exception):
    """A problem with the user's arguments or input: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _expression_pair(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageError(f"--expression expects NAME=VALUE, got {text!r}")
    try:
        number = float(value)
    except ValueError:
        raise UsageError(f"--expression {name}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise UsageError(f"--expression {name}: {value!r} is not a finite number")
    return name, number


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="densemesh", description="Dense 3D face reconstruction from photos and videos.")
    parser.add_argument("--version", action="version", version=f"densemesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    rec = sub.add_parser("reconstruct", help="reconstruct every face in a photo, a folder of photos or a video")
    rec.add_argument("input", type=Path, help="image, folder of images, or video file")
    rec.add_argument("--out", type=Path, required=True, help="output folder")

    model = sub.add_parser("model", help="inspect or export the face model")
    msub = model.add_subparsers(dest="model_command", metavar="ACTION", parser_class=_Parser)
    info = msub.add_parser("info", help="vertex/triangle counts, expression names, licence")
    info.add_argument("--head", action="store_true", help="describe the full-head topology")
    exp = msub.add_parser("export", help="write a posed / expressive mesh (OBJ or PLY)")
    exp.add_argument("--out", type=Path, required=True, help="FILE.obj or FILE.ply")
    exp.add_argument("--expression", action="append", default=[], metavar="NAME=VALUE",
                     help="blendshape weight, e.g. jawOpen=0.7 (repeatable; see 'model info')")
    exp.add_argument("--identity-seed", type=int, default=None, metavar="N",
                     help="random identity (coefficients ~ N(0,1)) from seed N; default: the mean face")
    exp.add_argument("--head", action="store_true", help="full head (24,591 vertices) instead of the face")
    return parser


def cmd_model_info(args) -> int:
    from densemesh.facemodel import FaceModel

    model = FaceModel.load("head" if args.head else "face")
    notice = Path(__file__).resolve().parent / "templates" / "NOTICE"
    print(f"topology      : {model.topology}")
    print(f"vertices      : {model.num_vertices}")
    print(f"triangles     : {model.faces.shape[0]}")
    print(f"uvs           : {model.uvs.shape[0]}")
    print(f"identity      : {model.num_identity} modes (coefficients ~ N(0, 1))")
    print(f"expressions   : {model.num_expression} (weights in [0, 1])")
    for i in range(0, model.num_expression, 6):
        print("   " + " ".join(f"{n:<17}" for n in model.expression_names[i:i + 6]).rstrip())
    print("landmarks     : ibug68 (68 vertices), mediapipe (468 surface points)")
    print(f"regions       : {', '.join(model.region_names)}")
    print("units         : centimetres; +X subject's left, +Y up, +Z out of the face")
    print(f"licence       : ICT-FaceKit, MIT (USC ICT); see {notice}")
    return 0


def cmd_model_export(args) -> int:
    import torch

    from densemesh.export import write_mesh
    from densemesh.facemodel import FaceModel

    if args.out.suffix.lower() not in (".obj", ".ply"):
        raise UsageError(f"--out must end in .obj or .ply, got {args.out.name!r}")
    pairs = [_expression_pair(text) for text in args.expression]
    model = FaceModel.load("head" if args.head else "face")
    unknown = [name for name, _ in pairs if name not in model.expression_names]
    if unknown:
        raise UsageError(f"unknown expression {unknown[0]!r} (see 'densemesh model info')")
    identity = None
    if args.identity_seed is not None:
        gen = torch.Generator().manual_seed(args.identity_seed)
        identity = torch.randn(1, model.num_identity, generator=gen)
    with torch.no_grad():
        vertices = model.decode(identity, model.expression_vector(dict(pairs)))[0]
    for path in write_mesh(args.out, vertices.numpy(), model):
        print(path)
    return 0


def cmd_reconstruct(args) -> int:
    if not args.input.exists():
        raise UsageError(f"input not found: {args.input}")
    if args.out.exists() and not args.out.is_dir():
        raise UsageError(f"--out must be a folder: {args.out}")
    raise UsageError("reconstruction is not available yet in this version")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "model":
            if args.model_command is None:
                raise UsageError("model needs an action: info or export (see 'densemesh model --help')")
            return {"info": cmd_model_info, "export": cmd_model_export}[args.model_command](args)
        return cmd_reconstruct(args)
    except UsageError as err:
        print(f"densemesh: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("densemesh: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # anything else: one line, no traceback unless asked for
        if os.environ.get("DENSEMESH_DEBUG"):
            raise
        print(f"densemesh: internal error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
