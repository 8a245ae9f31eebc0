"""`medsr study`: a blinded, randomised reader study of super-resolution methods, in one SQLite file.

Built from folders of outputs, one per method (as `medsr upscale` writes them; files matched by
name), and optionally a folder of references (ground truth) shown beside each question. Each
question is one region of one image and two methods, left and right in random order (two-
alternative forced choice: which is closer to the reference, or shows fine structure more
faithfully), optionally with a 1-5 artefact score per side. The seed of the randomisation is
recorded. Answers go into the file as they are given; a reader can stop and come back, two readers
at once do not collide (SQLite transactions, one answer per reader and question), and an answer
cannot be changed unless the study allows it.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import random
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsr.core.image import ImageError
from medsr.web.view import load, open_collection, windowed

QUESTIONS = {"reference": "Which is closer to the reference?",
             "structure": "Which shows fine structure more faithfully?"}
Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


@dataclass(frozen=True)
class Question:
    id: int
    number: int  # 1-based position in the study's order
    image: str
    region: tuple[int, int, int, int]  # x, y, w, h in the outputs' pixels
    left: str
    right: str


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise ValueError(f"{path}: no such study file")
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)  # autocommit
    try:
        connection.execute("SELECT key, value FROM settings LIMIT 1").fetchall()
    except sqlite3.DatabaseError:
        connection.close()
        raise ValueError(f"{path}: not a medsr study file") from None
    return connection


def report_methods(report: str | Path) -> tuple[dict[str, Path], Path]:
    """The models of an evaluate report written with ``save_outputs`` (name -> folder of outputs) and
    its ground-truth folder."""
    from medsr.evaluation.report import OUTPUTS

    found = Path(report) / OUTPUTS
    if not found.is_dir():
        raise ValueError(f"{report}: no {OUTPUTS}/ folder (write the report with medsr evaluate --save-outputs)")
    methods = {f.name: f for f in sorted(found.iterdir()) if f.is_dir() and f.name not in ("ground truth", "LR")}
    return methods, found / "ground truth"


def build(methods: dict[str, str | Path], output: str | Path, *, reference: str | Path | None = None,
          regions: int = 2, size: int = 128, seed: int = 0, question: str = "reference",
          allow_changes: bool = False) -> int:
    """Write a study to ``output`` (a new SQLite file); returns the number of questions.

    ``methods``: name -> folder of its outputs (at least two). Images present in every method's
    folder (and the reference's) take part; ``regions`` regions of ``size`` pixels per image at
    random places; every pair of methods is asked about each region.
    """
    output = Path(output)
    if len(methods) < 2:
        raise ValueError("a study compares at least two methods")
    if question not in QUESTIONS:
        raise ValueError(f"question {question!r}: one of {', '.join(QUESTIONS)}")
    if regions < 1 or size < 8:
        raise ValueError(f"regions {regions}, size {size}: at least 1 region of at least 8 pixels")
    if output.exists():
        raise ValueError(f"{output}: already exists (kept)")
    folders = [*methods.values(), *([reference] if reference else [])]
    collection = open_collection(folders)
    rng = random.Random(seed)
    rows = []
    names = list(methods)
    for item in collection.items:
        if any(f is None for f in item.files):
            continue
        try:
            height, width = load(item.files[0]).size
            sizes = {load(f).size for f in item.files}
        except ImageError:
            continue
        if len(sizes) > 1:
            raise ValueError(f"{item.name}: the methods' images differ in size ({sorted(sizes)}); a study compares "
                             "outputs of one size")
        side = min(size, height, width)
        for _ in range(regions):
            x, y = rng.randrange(width - side + 1), rng.randrange(height - side + 1)
            for a, b in itertools.combinations(range(len(names)), 2):
                left, right = (a, b) if rng.random() < 0.5 else (b, a)
                rows.append((item.name, x, y, side, side, names[left], names[right]))
    if not rows:
        raise ValueError("no image is present in every folder: nothing to ask")
    rng.shuffle(rows)
    files = {name: str(Path(folder).resolve()) for name, folder in methods.items()}
    output.parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(output)) as db, db:
        db.execute("PRAGMA journal_mode=WAL")  # kept by the file: readers never wait for a writer
        db.executescript("""
            CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE questions (id INTEGER PRIMARY KEY, position INTEGER NOT NULL, image TEXT NOT NULL,
                x INTEGER, y INTEGER, w INTEGER, h INTEGER, left_method TEXT NOT NULL, right_method TEXT NOT NULL);
            CREATE TABLE answers (question INTEGER NOT NULL REFERENCES questions(id), reader TEXT NOT NULL,
                choice TEXT NOT NULL CHECK (choice IN ('left', 'right')),
                artefacts_left INTEGER CHECK (artefacts_left BETWEEN 1 AND 5),
                artefacts_right INTEGER CHECK (artefacts_right BETWEEN 1 AND 5),
                seconds REAL, at TEXT NOT NULL, UNIQUE (question, reader));
        """)
        settings = {"methods": json.dumps(files), "reference": str(Path(reference).resolve()) if reference else "",
                    "seed": str(seed), "regions": str(regions), "size": str(size), "question": QUESTIONS[question],
                    "allow_changes": str(int(allow_changes)),
                    "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        db.executemany("INSERT INTO settings VALUES (?, ?)", settings.items())
        db.executemany("INSERT INTO questions (position, image, x, y, w, h, left_method, right_method) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [(i + 1, *row) for i, row in enumerate(rows)])
    return len(rows)


def settings(path: str | Path) -> dict[str, str]:
    with closing(_connect(Path(path))) as db:
        return dict(db.execute("SELECT key, value FROM settings"))


def _question(row) -> Question:
    return Question(id=row[0], number=row[1], image=row[2], region=(row[3], row[4], row[5], row[6]),
                    left=row[7], right=row[8])


def question(path: str | Path, question_id: int) -> Question:
    with closing(_connect(Path(path))) as db:
        row = db.execute("SELECT * FROM questions WHERE id = ?", (question_id,)).fetchone()
    if row is None:
        raise KeyError(f"no question {question_id}")
    return _question(row)


def next_question(path: str | Path, reader: str) -> tuple[Question | None, int, int]:
    """The reader's first unanswered question (None when done), how many they answered, and the total."""
    reader = _reader(reader)
    with closing(_connect(Path(path))) as db:
        row = db.execute("SELECT * FROM questions WHERE id NOT IN (SELECT question FROM answers WHERE reader = ?) "
                         "ORDER BY position LIMIT 1", (reader,)).fetchone()
        done = db.execute("SELECT COUNT(*) FROM answers WHERE reader = ?", (reader,)).fetchone()[0]
        total = db.execute("SELECT COUNT(*) FROM questions").fetchone()[0]
    return (None if row is None else _question(row)), done, total


def _reader(reader: str) -> str:
    reader = reader.strip()
    if not reader or len(reader) > 80:
        raise ValueError("a reader's name: 1 to 80 characters")
    return reader


def answer(path: str | Path, *, reader: str, question_id: object, choice: str, artefacts: dict | None = None,
           seconds: float | None = None) -> None:
    """Record an answer. ValueError when it is malformed, or given already and the study does not
    allow changes."""
    reader, artefacts = _reader(reader), artefacts or {}
    if not isinstance(question_id, int) or isinstance(question_id, bool) or not 0 < question_id < 2**62:
        raise ValueError(f"question {question_id!r}: a question number")
    if choice not in ("left", "right"):
        raise ValueError(f"choice {choice!r}: left or right")
    scores = [artefacts.get(side) for side in ("left", "right")]
    if any(s is not None and (type(s) is not int or not 1 <= s <= 5) for s in scores):
        raise ValueError("artefact scores are whole numbers from 1 to 5")
    if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"seconds {seconds}: a time of 0 or more")
    allow = settings(path)["allow_changes"] == "1"
    row = (question_id, reader, choice, *scores, seconds, time.strftime("%Y-%m-%d %H:%M:%S"))
    with closing(_connect(Path(path))) as db:
        if db.execute("SELECT 1 FROM questions WHERE id = ?", (question_id,)).fetchone() is None:
            raise ValueError(f"no question {question_id}")
        try:
            db.execute(f"INSERT {'OR REPLACE ' if allow else ''}INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)", row)
        except sqlite3.IntegrityError:
            raise ValueError(f"question {question_id} is answered already by {reader}; this study does not allow "
                             "changing an answer") from None


def crop(path: str | Path, question_id: int, side: str) -> np.ndarray:
    """The (C, h, w) pixels in [0, 1] a question shows on ``side`` (left, right or reference)."""
    q, config = question(path, question_id), settings(path)
    folders = json.loads(config["methods"])
    if side in ("left", "right"):
        folder = Path(folders[q.left if side == "left" else q.right])
    elif side == "reference" and config["reference"]:
        folder = Path(config["reference"])
    else:
        raise KeyError(f"no {side} image")
    found = _files_of(folder).get(q.image)
    if found is None or not found.is_file():
        raise KeyError(f"{folder}: {q.image} is gone")
    x, y, w, h = q.region
    return windowed(load(found))[:, y : y + h, x : x + w]  # as the viewer starts: DICOM's window


@functools.lru_cache(maxsize=8)
def _files_of(folder: Path) -> dict[str, Path]:
    """A study folder's files by name, listed once (every question asks for three of them)."""
    return {item.name: found for item in open_collection([folder]).items
            if (found := item.files[0]) is not None}  # always: a folder alone is the one layer of its items


# ---------------------------------------------------------------------------------------------
# Results


def wilson(wins: float, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion (it stays within 0..1 and is sound for few answers)."""
    if n == 0:
        return math.nan, math.nan
    p = wins / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _preference(rows) -> dict:
    """Per method: answers that showed it, how many preferred it, the share and its interval."""
    shown: dict[str, int] = {}
    won: dict[str, int] = {}
    for left, right, choice in rows:
        for method in (left, right):
            shown[method] = shown.get(method, 0) + 1
        winner = left if choice == "left" else right
        won[winner] = won.get(winner, 0) + 1
    return {m: {"preferred": won.get(m, 0), "shown": n, "share": won.get(m, 0) / n,
                "ci95": list(wilson(won.get(m, 0), n))} for m, n in sorted(shown.items())}


BOOTSTRAP_RESAMPLES = 2000


def readers_images_interval(rows, seed: int = 0) -> dict[str, list[float]]:
    """Per method, the 95% percentile interval of its share when readers and images are both drawn
    again with replacement (the multi-reader multi-case bootstrap): one reader's answers, and the
    answers about one image's regions, move together instead of counting as independent. ``rows``:
    (reader, image, left, right, choice). NaN with fewer than two images; with one reader it speaks
    for that reader's judgement alone."""
    readers, images = sorted({r[0] for r in rows}), sorted({r[1] for r in rows})
    methods = sorted({m for r in rows for m in r[2:4]})
    if len(images) < 2:
        return {m: [math.nan, math.nan] for m in methods}
    rng = np.random.default_rng(seed)
    reader_draws = rng.multinomial(len(readers), np.full(len(readers), 1 / len(readers)), size=BOOTSTRAP_RESAMPLES)
    image_draws = rng.multinomial(len(images), np.full(len(images), 1 / len(images)), size=BOOTSTRAP_RESAMPLES)
    reader_index, image_index = {r: i for i, r in enumerate(readers)}, {m: i for i, m in enumerate(images)}
    intervals = {}
    for method in methods:
        won, shown = np.zeros((2, len(readers), len(images)))
        for reader, image, left, right, choice in rows:
            if method in (left, right):
                cell = reader_index[reader], image_index[image]
                shown[cell] += 1
                won[cell] += (left if choice == "left" else right) == method
        wins = np.einsum("br,ri,bi->b", reader_draws, won, image_draws)
        counts = np.einsum("br,ri,bi->b", reader_draws, shown, image_draws)
        shares = wins[counts > 0] / counts[counts > 0]
        intervals[method] = [float(np.percentile(shares, 2.5)), float(np.percentile(shares, 97.5))]
    return intervals


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two readers' choices on the same questions (1: full agreement, 0: chance)."""
    if not a:
        return math.nan
    observed = np.mean([x == y for x, y in zip(a, b, strict=True)])
    labels = set(a) | set(b)
    expected = sum((a.count(label) / len(a)) * (b.count(label) / len(b)) for label in labels)
    return float((observed - expected) / (1 - expected)) if expected < 1 else math.nan


def results(path: str | Path) -> dict:
    """Preference per method, pooled and per reader (share of the comparisons it was in that
    readers preferred it, with Wilson 95% intervals, which count every answer as independent, and,
    pooled, the interval of the readers-and-images bootstrap, which does not), and agreement between
    readers on the questions both answered (share of equal choices and Cohen's kappa of the side
    chosen)."""
    with closing(_connect(Path(path))) as db:
        rows = db.execute("SELECT a.reader, q.id, q.left_method, q.right_method, a.choice, a.artefacts_left, "
                          "a.artefacts_right, a.seconds, q.image FROM answers a JOIN questions q ON q.id = a.question "
                          "ORDER BY a.reader, q.position").fetchall()
        total = db.execute("SELECT COUNT(*) FROM questions").fetchone()[0]
    readers = sorted({r[0] for r in rows})
    # agreement on the side chosen: each question offers two methods, so chance is about one half
    # whatever the number of methods (the preferred method's name would make it smaller, and kappa larger)
    chosen = {(r[0], r[1]): r[4] for r in rows}
    agreement = []
    for a, b in itertools.combinations(readers, 2):
        common = sorted(q for (reader, q) in chosen if reader == a and (b, q) in chosen)
        x, y = [chosen[(a, q)] for q in common], [chosen[(b, q)] for q in common]
        same = [i == j for i, j in zip(x, y, strict=True)]
        agreement.append({"readers": [a, b], "questions": len(common),
                          "agreement": float(np.mean(same)) if same else math.nan, "kappa": cohen_kappa(x, y)})
    artefacts: dict[str, list[int]] = {}
    for r in rows:
        for method, score in ((r[2], r[5]), (r[3], r[6])):
            if score is not None:
                artefacts.setdefault(method, []).append(score)
    seconds = [r[7] for r in rows if r[7] is not None]
    pooled = _preference([r[2:5] for r in rows])
    for method, interval in readers_images_interval([(r[0], r[8], *r[2:5]) for r in rows]).items():
        pooled[method]["ci95_readers_images"] = interval
    return {
        "study": str(path), "questions": total, "answers": len(rows), "readers": readers,
        "settings": settings(path),
        "pooled": pooled,
        "per_reader": {reader: _preference([r[2:5] for r in rows if r[0] == reader]) for reader in readers},
        "agreement": agreement,
        "artefacts": {m: {"mean": float(np.mean(v)), "n": len(v)} for m, v in sorted(artefacts.items())},
        "median_seconds_per_answer": float(np.median(seconds)) if seconds else math.nan,
    }


def write_results(found: dict, folder: str | Path) -> Path:
    """results.json and results.html (a plot of the pooled preferences with their intervals, and the
    tables) of ``found`` (``results``) in ``folder``; returns the page's path."""
    import html

    from medsr.core.files import write_atomic
    from medsr.evaluation.report import strict_json

    folder = Path(folder)
    write_atomic(folder / "results.json", json.dumps(strict_json(found), indent=2, allow_nan=False).encode())

    def table(preference: dict) -> str:
        pooled = any("ci95_readers_images" in v for v in preference.values())
        rows = "".join(f"<tr><td>{html.escape(m)}</td><td>{v['preferred']} / {v['shown']}</td>"
                       f"<td>{v['share']:.2f} [{v['ci95'][0]:.2f}, {v['ci95'][1]:.2f}]</td>"
                       + (f"<td>[{v['ci95_readers_images'][0]:.2f}, {v['ci95_readers_images'][1]:.2f}]</td>"
                          if pooled else "") + "</tr>" for m, v in preference.items())
        extra = "<th>95% interval, readers and images resampled</th>" if pooled else ""
        return (f"<table><tr><th>method</th><th>preferred / shown</th><th>share [Wilson 95% interval]</th>{extra}"
                f"</tr>{rows}</table>")

    def drawn(v: dict) -> list[float]:  # the honest interval where there is one
        interval = v.get("ci95_readers_images", [math.nan])
        return v["ci95"] if math.isnan(interval[0]) else interval

    bars, width = [], 360
    for i, (method, v) in enumerate(found["pooled"].items()):
        y, (low, high) = 30 + 40 * i, drawn(v)
        bars.append(f'<text x="0" y="{y + 14}">{html.escape(method)}</text>'
                    f'<rect x="160" y="{y}" width="{v["share"] * width:.1f}" height="20" fill="#4a7fb5"/>'
                    f'<line x1="{160 + low * width:.1f}" x2="{160 + high * width:.1f}" y1="{y + 10}" y2="{y + 10}" '
                    f'stroke="black" stroke-width="2"/>')
    plot = (f'<svg xmlns="http://www.w3.org/2000/svg" width="560" height="{60 + 40 * len(found["pooled"])}" '
            f'font-family="sans-serif" font-size="13"><line x1="{160 + width / 2}" x2="{160 + width / 2}" y1="20" '
            f'y2="{30 + 40 * len(found["pooled"])}" stroke="#999" stroke-dasharray="4"/>{"".join(bars)}'
            f'<text x="160" y="15">0</text><text x="{150 + width}" y="15">1</text></svg>')
    agreement = "".join(f"<tr><td>{html.escape(' & '.join(a['readers']))}</td><td>{a['questions']}</td>"
                        f"<td>{a['agreement']:.2f}</td><td>{a['kappa']:.2f}</td></tr>" for a in found["agreement"])
    readers = "".join(f"<h3>{html.escape(r)}</h3>{table(p)}" for r, p in found["per_reader"].items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>medsr study results</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}td,th{{padding:.2em .8em;text-align:left}}</style>
</head><body><h1>Reader study results</h1>
<p>{found['answers']} answers to {found['questions']} questions by {len(found['readers'])} reader(s).
Question: {html.escape(found['settings']['question'])} Seed {html.escape(found['settings']['seed'])}.</p>
<h2>Preference, pooled</h2><p>Share of the comparisons a method was in where it was preferred, with the
95% interval of a bootstrap that draws readers and images again (with fewer than two images: Wilson's,
which counts every answer as independent); 0.5 = no preference, the dashed line.</p>{plot}{table(found['pooled'])}
<h2>Per reader</h2>{readers}
<h2>Agreement between readers</h2><table><tr><th>readers</th><th>questions both answered</th>
<th>same choice</th><th>Cohen's kappa</th></tr>{agreement}</table></body></html>"""
    write_atomic(folder / "results.html", page.encode())
    return folder / "results.html"
