"""Where downloaded weights live, whether medsr may download, and downloads checked by SHA-256."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from tqdm import tqdm

from medsr.core import files
from medsr.models.state_dicts import WeightsError


def medsr_home() -> Path:
    """The folder for cached weights: ``$MEDSR_HOME`` or the user's cache folder."""
    if os.environ.get("MEDSR_HOME"):
        return Path(os.environ["MEDSR_HOME"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "medsr"


def offline() -> bool:
    """``MEDSR_OFFLINE=1`` (or true, yes): nothing is downloaded."""
    return os.environ.get("MEDSR_OFFLINE", "").lower() in ("1", "true", "yes")


def download(url: str, target: Path, *, sha256: str | None, timeout: float = 30.0) -> None:
    """Download ``url`` to ``target`` through a temporary file, with a progress bar; a file whose
    SHA-256 is not ``sha256`` is refused (WeightsError) and nothing is written. ``sha256=None`` only
    for files checked otherwise."""

    def fetch_to(tmp: Path) -> None:
        with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name, leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))

    def check_digest(tmp: Path) -> None:
        found = files.sha256(tmp)
        if sha256 is not None and found != sha256:
            raise WeightsError(f"{url}: the downloaded file's SHA-256 is {found}, not the {sha256} recorded in "
                               "medsr; refused (a changed or damaged file)")

    files.write_atomic(target, fetch_to, verify=check_digest)
