"""Side-by-side figure: LR (pixel-repeated) | bicubic | model outputs, whole image and a magnified region.

Usage: python examples/make_figure.py LR_IMAGE SR_IMAGE [SR_IMAGE ...] -o FIGURE.png [--box X,Y,W,H]
       [--labels NAME,NAME,...]
(the box is in LR pixels; default: the centre quarter).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from medsr.evaluation.figures import to_pil
from medsr.formats.io import read_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lr", type=Path)
    parser.add_argument("sr", type=Path, nargs="+")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--box", default=None, help="X,Y,W,H of the magnified region in LR pixels")
    parser.add_argument("--labels", default=None, help="one label per SR image (default: file names)")
    args = parser.parse_args()

    labels = args.labels.split(",") if args.labels else [str(p) for p in args.sr]
    if len(labels) != len(args.sr):
        parser.error(f"{len(labels)} labels for {len(args.sr)} SR images")
    lr, outputs = to_pil(read_image(args.lr).pixels), [to_pil(read_image(p).pixels) for p in args.sr]
    sr = outputs[0]
    scale = sr.width // lr.width
    x, y, w, h = (int(v) for v in args.box.split(",")) if args.box else (
        lr.width // 4, lr.height // 4, lr.width // 2, lr.height // 2)
    panels = {
        "LR (pixels repeated)": lr.resize(sr.size, Image.Resampling.NEAREST),
        "bicubic": lr.resize(sr.size, Image.Resampling.BICUBIC),
        **dict(zip(labels, outputs, strict=True)),
    }
    box = (x * scale, y * scale, (x + w) * scale, (y + h) * scale)
    tile = sr.width
    zoom = (tile, round(tile * h / w))
    top = max(20, tile // 20)  # the label band grows with the panels: readable when the figure is shrunk
    font = ImageFont.load_default(size=round(top * 0.7))  # Pillow's scalable font, evenly kerned
    figure = Image.new("RGB", (tile * len(panels), top + sr.height + zoom[1]), "white")
    draw = ImageDraw.Draw(figure)
    for i, (name, panel) in enumerate(panels.items()):
        figure.paste(panel, (i * tile, top))
        figure.paste(panel.crop(box).resize(zoom, Image.Resampling.NEAREST), (i * tile, top + sr.height))
        draw.text((i * tile + top // 4, top // 8), name, fill="black", font=font)
        draw.rectangle([i * tile + box[0], top + box[1], i * tile + box[2], top + box[3]], outline="yellow",
                       width=max(1, tile // 400))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
