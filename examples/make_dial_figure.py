"""The fidelity dial on one image: a medical model at F = 0, 0.5 and 1, each with its detail map.

Usage: python examples/make_dial_figure.py LR_IMAGE --model retina|cxr -o FIGURE.jpg [--box X,Y,W,H]
(the box, in LR pixels, is the magnified region; default: the centre half).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

import medsr
from medsr.engine.detail import detail_maps, heat_map
from medsr.evaluation.figures import to_pil

FIDELITIES = (0.0, 0.5, 1.0)
PANEL = 320


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lr", type=Path)
    parser.add_argument("--model", required=True, choices=["retina", "cxr"])
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--box", default=None, help="X,Y,W,H of the magnified region in LR pixels")
    args = parser.parse_args()

    lr = medsr.read_image(args.lr)
    height, width = lr.size
    x, y, w, h = (int(v) for v in args.box.split(",")) if args.box else (width // 4, height // 4, width // 2,
                                                                         height // 2)
    columns = []
    for fidelity in FIDELITIES:
        sr = medsr.upscale(lr, model=args.model, fidelity=fidelity)
        maps = detail_maps(sr.pixels, lr.pixels)
        scale = sr.size[0] // height
        box = (x * scale, y * scale, (x + w) * scale, (y + h) * scale)
        picture = to_pil(sr.pixels).crop(box).resize((PANEL, PANEL), Image.Resampling.LANCZOS)
        detail = Image.fromarray(heat_map(maps.detail, sr.pixels)).crop(box).resize((PANEL, PANEL))
        columns.append((f"{args.model}, fidelity {fidelity:g}: detail {maps.detail_score:.1f}", picture, detail))
    font = ImageFont.load_default(size=16)
    figure = Image.new("RGB", (PANEL * len(columns), 24 + 2 * PANEL), "white")
    draw = ImageDraw.Draw(figure)
    for i, (label, picture, detail) in enumerate(columns):
        figure.paste(picture, (i * PANEL, 24))
        figure.paste(detail, (i * PANEL, 24 + PANEL))
        draw.text((i * PANEL + 4, 4), label, fill="black", font=font)
    figure.save(args.output, quality=90)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
