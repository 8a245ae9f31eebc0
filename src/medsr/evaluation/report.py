"""Evaluation outputs: per-image CSV, summary JSON, comparison figures, and an offline HTML report."""

from __future__ import annotations

import base64
import csv
import functools
import html
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont
from scipy.ndimage import uniform_filter

from medsr.core.files import write_atomic
from medsr.evaluation.evaluate import Result
from medsr.evaluation.figures import to_pil

COLUMNS = ("psnr", "ssim", "psnr_inside", "ssim_inside", "vessel_agreement", "vessel_auc", "thin_vessel_auc",
           "hf_kept", "hf_invented", "mf_kept", "mf_invented", "lpips", "mae")  # mae: volume-x2, in the volume's units
PANEL = 256  # pixels per figure panel
LABEL_HEIGHT = 26  # pixels for the model names above the panels and the error scale below
ERROR_GAIN = 4  # the error row shows |SR - GT| x 4


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    columns = [c for c in COLUMNS if any(c in row for row in summary.values())]
    lines = ["| model | images | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for model, row in summary.items():
        cells = [_fmt(row.get(c, math.nan)) for c in columns]
        lines.append(f"| {model} | {row.get('images', 0)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PAIRED_COLUMNS = ("psnr", "ssim", "psnr_inside", "ssim_inside", "vessel_auc", "thin_vessel_auc", "hf_invented",
                  "mf_invented", "mae")


def paired_table(statistics: dict) -> str:
    """Markdown: per model, for the main metrics, the paired difference to the reference with its
    interval and wins (e.g. ``+0.52 [+0.31, +0.70] 13/14``)."""
    rows = [(m, cols) for m, cols in statistics.items() if any("vs_reference" in c for c in cols.values())]
    columns = [c for c in PAIRED_COLUMNS if any(c in cols for _, cols in rows)]
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for model, cols in rows:
        lines.append(f"| {model} | " + " | ".join(_paired_cell(cols.get(c, {}).get("vs_reference")) for c in columns)
                     + " |")
    return "\n".join(lines)


def _paired_cell(entry: dict | None) -> str:
    if not entry or not entry["n"] or not math.isfinite(entry["difference"]):
        return "-"
    low, high = entry["ci95"]
    interval = f" [{low:+.4g}, {high:+.4g}]" if math.isfinite(low) else ""
    return f"{entry['difference']:+.4g}{interval} {entry['wins']}/{entry['n']}"


# Aghelan & Rouhani, arXiv 2211.00577, Tables 1 and 2 (PSNR dB / SSIM).
PAPER_TABLE = {
    "retina-x2": {"data": "DRIVE, 40 images (not redistributable: not in medsr's shared data)",
                  "Real-ESRGAN": (35.33, 0.8866), "fine-tuned": (34.21, 0.8923)},
    "cxr-x4": {"data": "NIH ChestX-ray14, 40 random images",
               "Real-ESRGAN": (32.09, 0.8668), "fine-tuned": (32.46, 0.8232)},
}


def paper_comparison(protocol: str, summary: dict[str, dict[str, float]], blur_sigma: float,
                     fine_tuned: str | None) -> str:
    """Markdown: the paper's values beside the measured ones for the same protocol, and what differs."""
    paper = PAPER_TABLE[protocol]
    measured = {"Real-ESRGAN": summary.get("realesrgan-x4plus", {}), "fine-tuned": summary.get(fine_tuned or "", {})}
    lines = ["| model | paper PSNR | paper SSIM | measured PSNR | measured SSIM |", "|---|---|---|---|---|"]
    for name in ("Real-ESRGAN", "fine-tuned"):
        row = measured[name]
        label = name if name == "Real-ESRGAN" else f"fine-tuned (here: {fine_tuned or 'none given'})"
        lines.append(f"| {label} | {paper[name][0]:.2f} | {paper[name][1]:.4f} | {_fmt(row.get('psnr', math.nan))} "
                     f"| {_fmt(row.get('ssim', math.nan))} |")
    lines.append(f"\nPaper: {paper['data']}; its LR blur kernel is not given. Here: the images evaluated, Gaussian "
                 f"blur sigma {blur_sigma:g} LR pixel; the paper's fine-tuned weights were not published, so "
                 "its row is compared with medsr's own fine-tuned model. Compare trends, not digits.")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4f}"


def write_csv(path: Path, results: list[Result]) -> None:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["image", "model", *COLUMNS])
    for result in results:
        for model, row in result.rows.items():
            writer.writerow([result.sample.name, model, *[row.get(c, "") for c in COLUMNS]])
    write_atomic(path, text.getvalue().encode())


OUTPUTS = "outputs"  # report folder: outputs/<model>/<image>.png, with "ground truth" and "LR" beside them


def write_outputs(folder: Path, result: Result) -> None:
    """The images behind one result as 16-bit PNGs: ``outputs/<model>/<image>.png`` for every model,
    ``outputs/ground truth/`` and ``outputs/LR/`` (for `medsr view` and `medsr study build --report`)."""
    from medsr.core.image import Image
    from medsr.formats.io import write_image

    for name, pixels in {"ground truth": result.gt, "LR": result.lr, **result.outputs}.items():
        write_image(folder / OUTPUTS / name / f"{result.sample.name}.png", Image(pixels=pixels, max_value=65535),
                    overwrite=True)


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
    top = LABEL_HEIGHT
    figure = PILImage.new("RGB", (PANEL * len(columns), top + 3 * PANEL + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(figure)
    font = ImageFont.load_default(size=LABEL_HEIGHT - 8)
    scale = PANEL / gt_size
    for i, (name, pixels) in enumerate(columns.items()):
        picture = to_pil(pixels)
        figure.paste(picture.resize((PANEL, PANEL), PILImage.Resampling.LANCZOS), (i * PANEL, top))
        crop = picture.crop((x, y, x + w, y + h)).resize((PANEL, PANEL), PILImage.Resampling.NEAREST)
        figure.paste(crop, (i * PANEL, top + PANEL))
        if name not in ("LR", "ground truth"):
            error = np.clip(np.abs(pixels - result.gt).mean(0, keepdims=True) * ERROR_GAIN, 0, 1)
            figure.paste(to_pil(error).resize((PANEL, PANEL), PILImage.Resampling.BOX), (i * PANEL, top + 2 * PANEL))
        draw.text((i * PANEL + 4, 4), name, fill="black", font=font)
        box = [i * PANEL + x * scale, top + y * scale, i * PANEL + (x + w) * scale, top + (y + h) * scale]
        draw.rectangle(box, outline="yellow")
    _error_scale(draw, (PANEL + 4, top + 3 * PANEL + 4), font)
    return figure


def _error_scale(draw: ImageDraw.ImageDraw, at: tuple[int, int], font) -> None:
    """The error row's colour bar: black = 0, white = 1/ERROR_GAIN of the range (64 of 255 levels)."""
    x, y = at
    for i in range(PANEL):
        level = round(255 * i / (PANEL - 1))
        draw.line([x + i, y, x + i, y + LABEL_HEIGHT - 10], fill=(level, level, level))
    draw.rectangle([x, y, x + PANEL, y + LABEL_HEIGHT - 10], outline="black")
    draw.text((x + PANEL + 8, y - 2), f"error |SR - GT|: 0 .. {255 // ERROR_GAIN} of 255 levels", fill="black",
              font=font)


def dial_points(summary: dict[str, dict[str, float]], metric: str) -> dict[str, list[tuple[float, float]]]:
    """{"retina": [(fidelity, value), ...]} from the summary's ``NAME@F`` entries, sorted by F."""
    points: dict[str, list[tuple[float, float]]] = {}
    for label, row in summary.items():
        name, at, fidelity = label.rpartition("@")
        try:
            value = float(fidelity) if at else math.nan
        except ValueError:  # an @ in a label or path, not a fidelity
            continue
        if 0 <= value <= 1 and math.isfinite(row.get(metric, math.nan)):
            points.setdefault(name, []).append((value, row[metric]))
    return {name: sorted(values) for name, values in points.items() if len(values) > 1}


DIAL_PANEL = (420, 300, 50)  # width, height, margin of one panel of the dial figure
DIAL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def dial_figure(summary: dict[str, dict[str, float]], metrics: tuple[str, ...] = ("psnr", "hf_invented")
                ) -> PILImage.Image | None:
    """PSNR and invented energy against the fidelity dial, one panel per metric; None when the run
    has no model at two or more fidelities. Bicubic and Lanczos are drawn as dashed levels."""
    panels = [(metric, dial_points(summary, metric)) for metric in metrics]
    if not any(points for _, points in panels):
        return None
    width, height, _ = DIAL_PANEL
    figure = PILImage.new("RGB", (width * len(panels), height), "white")
    draw = ImageDraw.Draw(figure)
    for index, (metric, points) in enumerate(panels):
        levels = {m: row[metric] for m, row in summary.items()
                  if m in ("bicubic", "lanczos") and math.isfinite(row.get(metric, math.nan))}
        _dial_panel(draw, index * width, metric, points, levels)
    return figure


def _dial_panel(draw: ImageDraw.ImageDraw, left: int, metric: str, points: dict[str, list[tuple[float, float]]],
                levels: dict[str, float]) -> None:
    width, height, pad = DIAL_PANEL
    values = [v for series in points.values() for _, v in series] + list(levels.values())
    if not values:
        return
    low, high = min(values), max(values)
    margin = 0.05 * (high - low) or 1.0
    low, high = low - margin, high + margin

    def at(fidelity: float, value: float) -> tuple[float, float]:
        return (left + pad + fidelity * (width - 2 * pad),
                height - pad - (value - low) / (high - low) * (height - 2 * pad))

    draw.rectangle([left + pad, pad, left + width - pad, height - pad], outline="#888")
    draw.text((left + pad, 12), f"{metric} against fidelity (0: GAN model, 1: fidelity model)", fill="black")
    for fidelity in (0, 1):
        draw.text((at(fidelity, low)[0] - 3, height - pad + 6), str(fidelity), fill="black")
    for value in (low, high):
        draw.text((left + 4, at(0, value)[1] - 6), f"{value:.3g}", fill="black")
    for name, level in levels.items():
        (x0, y), (x1, _) = at(0, level), at(1, level)
        for start in range(int(x0), int(x1), 12):
            draw.line([start, y, start + 6, y], fill="#555")
        draw.text((x1 - 60, y - 14), name, fill="#555")
    for colour, (name, series) in zip(DIAL_COLOURS * 4, points.items(), strict=False):
        draw.line([at(f, v) for f, v in series], fill=colour, width=2)
        for f, v in series:
            x, y = at(f, v)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        x, y = at(*series[0])
        draw.text((x + 6, y + 4), name, fill=colour)


def _png_data(picture: PILImage.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_report(folder: Path, results: list[Result], summary: dict, settings: dict, *, figures: int = 4,
                 region: tuple[int, int, int, int] | None = None, statistics: dict | None = None) -> Path:
    """per_image.csv, summary.json, figures/*.png and report.html (self-contained) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_csv(folder / "per_image.csv", results)
    document = strict_json({"settings": settings, "summary": summary, "statistics": statistics or {}})
    write_atomic(folder / "summary.json", json.dumps(document, indent=2, allow_nan=False).encode())
    (folder / "figures").mkdir(exist_ok=True)
    sections = []
    dial = dial_figure(summary)
    if dial is not None:
        write_atomic(folder / "figures" / "fidelity-dial.png", lambda tmp: dial.save(tmp, "PNG"))
        sections.append(f'<h3>The fidelity dial</h3><img alt="metrics against fidelity" '
                        f'src="data:image/png;base64,{_png_data(dial)}">')
    for result in results[:figures]:
        figure = comparison_figure(result, region)
        write_atomic(folder / "figures" / f"{result.sample.name}.png", functools.partial(figure.save, format="PNG"))
        sections.append(f"<h3>{html.escape(result.sample.name)}</h3>"
                        f'<img alt="comparison for {html.escape(result.sample.name)}" '
                        f'src="data:image/png;base64,{_png_data(figure)}">')
    page = _PAGE.format(
        title=html.escape(f"medsr evaluation: {settings.get('protocol', '')}"),
        settings="".join(f'<tr><th>{html.escape(str(k))}</th><td class="text">{html.escape(str(v))}</td></tr>'
                         for k, v in settings.items()),
        summary=_html_table(["model", "images", *COLUMNS],
                            [[m, row.get("images", "")] + [row.get(c, math.nan) for c in COLUMNS]
                             for m, row in summary.items()]),
        images=_html_table(["image", "model", *COLUMNS],
                           [[r.sample.name, m] + [row.get(c, math.nan) for c in COLUMNS]
                            for r in results for m, row in r.rows.items()]),
        figures="\n".join(sections),
        paired=_markdown_to_html(paired_table(statistics or {})),
        reference=html.escape(str(settings.get("reference", ""))),
        legend=_html_table(["metric", "what it measures", "better", "unit"], [list(row) for row in LEGEND]),
    )
    write_atomic(folder / "report.html", page.encode())
    return folder / "report.html"


LEGEND = (
    ("psnr", "peak signal-to-noise ratio against the ground truth, on the source's value range", "higher", "dB"),
    ("ssim", "structural similarity (11x11 Gaussian window unless --ssim skimage)", "higher", "0..1"),
    ("psnr_inside / ssim_inside", "the same inside the anatomy: the fundus disc 8 px in from its rim (retina), "
     "the image without a 10% border band (chest X-ray)", "higher", "dB / 0..1"),
    ("vessel_agreement", "correlation of Frangi vesselness maps, SR vs ground truth, in the field of view",
     "higher", "-1..1"),
    ("vessel_auc", "how well SR vesselness separates the manual vessel annotation (ground truth's own AUC "
     "is its ceiling)", "higher", "0..1"),
    ("thin_vessel_auc", "the same for annotated vessels at most 3 px wide against the background (wider "
     "vessels left out)", "higher", "0..1"),
    ("hf_kept / mf_kept", "share of the ground truth's high / middle band detail that SR reproduces", "higher",
     "ratio"),
    ("hf_invented / mf_invented", "band energy in SR that the ground truth lacks, relative to its own energy",
     "lower", "ratio"),
    ("lpips", "learned perceptual distance (AlexNet), when its weights are present", "lower", "0..1"),
)


def _markdown_to_html(table: str) -> str:
    header, _, *rows = table.splitlines()
    cells = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
    return _html_table(cells(header), [cells(row) for row in rows])


def strict_json(value):
    """NaN and infinities (a metric that does not apply, LPIPS without weights) become null, which
    strict JSON readers accept; the settings say why a column is empty."""
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _html_table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td>{_fmt(v)}</td>" if isinstance(v, float) else f'<td class="text">{html.escape(str(v))}</td>'
        for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 90%; }}
th, td {{ border: 1px solid #bbb; padding: 3px 8px; text-align: right; }}
th {{ background: #eee; }} td:first-child, th:first-child, td.text {{ text-align: left; }}
h3 {{ font-size: 120%; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{title}</h1>
<p>Metrics are defined in medsr's docs/METRICS.md. Figures: columns LR (pixels repeated) | models | ground
truth; rows: whole image, the magnified region (yellow box), and the error |SR - GT| x 4 (scale under
each figure).</p>
<h2>Settings and provenance</h2><table>{settings}</table>
<h2>Summary (mean per model)</h2>{summary}
<h2>Paired against {reference}</h2>
<p>Per image, model minus {reference}: the mean, its bootstrap 95% interval (2,000 resamples of the
images), and on how many images the model is better. Why <code>lanczos-projected</code> is the
default reference: every output medsr writes is projected so that it averages back to its input, and
Lanczos interpolation followed by that same projection (iterative back-projection) is the classical
method a network must beat to earn its cost.</p>{paired}
<h2>Metrics</h2>{legend}
<h2>Figures</h2>{figures}
<h2>Per image</h2>{images}
</body></html>
"""
