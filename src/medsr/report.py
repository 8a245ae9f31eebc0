"""Evaluation outputs: per-image CSV, summary JSON, comparison figures, and an offline HTML report."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw
from scipy.ndimage import uniform_filter

from medsr.evaluate import Result
from medsr.figures import to_pil

COLUMNS = ("psnr", "ssim", "vessel_agreement", "vessel_auc", "hf_kept", "hf_invented", "mf_kept", "mf_invented",
           "lpips")
PANEL = 256  # pixels per figure panel


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    columns = [c for c in COLUMNS if any(c in row for row in summary.values())]
    lines = ["| model | images | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for model, row in summary.items():
        cells = [_fmt(row.get(c, math.nan)) for c in columns]
        lines.append(f"| {model} | {row.get('images', 0)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4f}"


def write_csv(path: Path, results: list[Result]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "model", *COLUMNS])
        for result in results:
            for model, row in result.rows.items():
                writer.writerow([result.sample.name, model, *[row.get(c, "") for c in COLUMNS]])


def region_of_difference(outputs: dict[str, np.ndarray], fraction: int = 6) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the square window where the first two models differ most."""
    images = list(outputs.values())
    size = images[0].shape[-1] // fraction
    if len(images) < 2:
        return (images[0].shape[-1] - size) // 2, (images[0].shape[-2] - size) // 2, size, size
    diff = uniform_filter(np.abs(images[-1] - images[-2]).mean(0), size=size, mode="constant")
    half = size // 2
    inner = diff[half:-half, half:-half]
    y, x = np.unravel_index(np.argmax(inner), inner.shape)
    return int(x), int(y), size, size


def comparison_figure(result: Result, region: tuple[int, int, int, int] | None = None) -> PILImage.Image:
    """Columns LR | models... | GT; rows: whole image, magnified region, error |SR - GT| x 4."""
    gt_size = result.gt.shape[-1]
    factor = gt_size // result.lr.shape[-1]
    columns = {"LR": np.repeat(np.repeat(result.lr, factor, 1), factor, 2)}
    columns.update(result.outputs)
    columns["ground truth"] = result.gt
    x, y, w, h = region or region_of_difference(result.outputs)
    figure = PILImage.new("RGB", (PANEL * len(columns), 18 + 3 * PANEL), "white")
    draw = ImageDraw.Draw(figure)
    scale = PANEL / gt_size
    for i, (name, pixels) in enumerate(columns.items()):
        picture = to_pil(pixels)
        figure.paste(picture.resize((PANEL, PANEL), PILImage.Resampling.LANCZOS), (i * PANEL, 18))
        crop = picture.crop((x, y, x + w, y + h)).resize((PANEL, PANEL), PILImage.Resampling.NEAREST)
        figure.paste(crop, (i * PANEL, 18 + PANEL))
        if name not in ("LR", "ground truth"):
            error = np.clip(np.abs(pixels - result.gt).mean(0, keepdims=True) * 4, 0, 1)
            figure.paste(to_pil(error).resize((PANEL, PANEL), PILImage.Resampling.BOX), (i * PANEL, 18 + 2 * PANEL))
        draw.text((i * PANEL + 4, 3), name, fill="black")
        box = [i * PANEL + x * scale, 18 + y * scale, i * PANEL + (x + w) * scale, 18 + (y + h) * scale]
        draw.rectangle(box, outline="yellow")
    return figure


def _png_data(picture: PILImage.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(folder: Path, results: list[Result], summary: dict, settings: dict, *, figures: int = 4,
                 region: tuple[int, int, int, int] | None = None) -> Path:
    """per_image.csv, summary.json, figures/*.png and report.html (self-contained) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "per_image.csv", results)
    (folder / "summary.json").write_text(json.dumps({"settings": settings, "summary": summary}, indent=2,
                                                    default=_json_number))
    (folder / "figures").mkdir(exist_ok=True)
    sections = []
    for result in results[:figures]:
        figure = comparison_figure(result, region)
        figure.save(folder / "figures" / f"{result.sample.name}.png")
        sections.append(f"<h3>{html.escape(result.sample.name)}</h3>"
                        f'<img alt="comparison for {html.escape(result.sample.name)}" '
                        f'src="data:image/png;base64,{_png_data(figure)}">')
    page = _PAGE.format(
        title=html.escape(f"medsr evaluation: {settings.get('protocol', '')}"),
        settings="".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                         for k, v in settings.items()),
        summary=_html_table(["model", "images", *COLUMNS],
                            [[m, row.get("images", "")] + [row.get(c, math.nan) for c in COLUMNS]
                             for m, row in summary.items()]),
        images=_html_table(["image", "model", *COLUMNS],
                           [[r.sample.name, m] + [row.get(c, math.nan) for c in COLUMNS]
                            for r in results for m, row in r.rows.items()]),
        figures="\n".join(sections),
    )
    (folder / "report.html").write_text(page)
    return folder / "report.html"


def _json_number(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td>{_fmt(v) if isinstance(v, float) else html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 90%; }}
th, td {{ border: 1px solid #bbb; padding: 3px 8px; text-align: right; }}
th {{ background: #eee; }} td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
<p>Metrics are defined in medsr's docs/METRICS.md. Figures: columns LR (pixels repeated) | models | ground
truth; rows: whole image, the magnified region (yellow box), and the error |SR - GT| x 4.</p>
<h2>Settings</h2><table>{settings}</table>
<h2>Summary (mean per model)</h2>{summary}
<h2>Figures</h2>{figures}
<h2>Per image</h2>{images}
</body></html>
"""
