"""A DICOM node: a Storage SCP that upscales each series it receives and writes the derived series.

Archives move images by DICOM networking (C-STORE), so medsr can sit where a PACS routes to:

- **Nothing lost**: an instance is answered "success" only once it is on disk, written atomically and
  fsynced, under ``storage/incoming/SERIES/SOP.dcm``; the queue of series is the folders there, so a
  node killed mid-series and started again finishes every series it acknowledged.
- **A series at a time**: when a series has received nothing for ``stable_after`` seconds it is
  upscaled as one series (``medsr.upscale_files``: one value range, the values contract, ``auto``
  by Modality), written to ``output/SERIES/``, and its incoming folder moved to ``storage/done/``.
  The derived UIDs come from the source's, so a series received twice gives the same derived series.
  A series that fails is moved to ``storage/failed/SERIES/`` with ``reason.txt``, and the node goes on.
- **Who may send**: calling AE titles in ``allow`` (any, when empty); others are rejected at
  association. Objects without pixels (reports, presentation states) are stored and never upscaled.

- **On to an archive**: with ``send_to`` (``AET@HOST:PORT``) the derived series is sent by C-STORE;
  a series that cannot be sent is moved aside like a failed one, with the reason.

Not yet: STOW-RS, a YAML configuration, and the tests against a real Orthanc.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from medsr.core import files

log = logging.getLogger(__name__)

SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
VERIFICATION = "1.2.840.10008.1.1"  # C-ECHO's SOP class: "are you there?"
SAFE_NAME = re.compile(r"[^0-9A-Za-z.\-]")


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """Settings of ``medsr dicom-node``."""

    storage: Path
    output: Path
    ae_title: str = "MEDSR"
    port: int = 11112
    bind: str = "127.0.0.1"
    allow: tuple[str, ...] = ()
    stable_after: float = 10.0
    outscale: float = 2.0
    model: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    send_to: str | None = None  # AET@HOST:PORT: where the derived series go by C-STORE

    def __post_init__(self) -> None:
        if self.send_to is not None:
            parse_destination(self.send_to)
        if not 1 <= len(self.ae_title) <= 16 or not self.ae_title.isascii():
            raise ValueError(f"ae_title {self.ae_title!r}: 1 to 16 ASCII characters")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port}: 0 to 65535")
        if not self.stable_after >= 0:
            raise ValueError(f"stable_after {self.stable_after}: 0 or more seconds")
        if any(not 1 <= len(title) <= 16 for title in self.allow):
            raise ValueError(f"allow {self.allow}: AE titles of 1 to 16 characters")


@dataclass
class Node:
    """The node's state: where series wait, and the last time each received an instance."""

    config: NodeConfig
    last_seen: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        for name in ("incoming", "done", "failed"):
            (self.config.storage / name).mkdir(parents=True, exist_ok=True)
        self.config.output.mkdir(parents=True, exist_ok=True)
        now = time.monotonic()
        for waiting in self.pending():  # acknowledged before a restart: due as soon as they are stable
            self.last_seen.setdefault(waiting.name, now)

    def pending(self) -> list[Path]:
        return sorted(p for p in (self.config.storage / "incoming").iterdir() if p.is_dir())

    def store(self, dataset, file_meta) -> int:
        """One received instance to disk, atomically and fsynced; the status to answer."""
        series = SAFE_NAME.sub("_", str(dataset.get("SeriesInstanceUID", "") or "no-series"))
        sop = SAFE_NAME.sub("_", str(dataset.get("SOPInstanceUID", "") or f"instance-{time.time_ns()}"))
        folder = self.config.storage / "incoming" / series
        dataset.file_meta = file_meta
        try:
            folder.mkdir(parents=True, exist_ok=True)
            files.write_atomic(folder / f"{sop}.dcm", lambda tmp: _save_synced(dataset, tmp))
        except OSError as exc:
            log.error("%s: could not store %s (%s); answered 'out of resources'", series, sop, exc)
            return OUT_OF_RESOURCES
        with self.lock:
            self.last_seen[series] = time.monotonic()
        return SUCCESS

    def process_stable(self, now: float | None = None) -> list[str]:
        """Upscale every series quiet for ``stable_after`` seconds; the series done (or failed)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            due = [s for s, seen in self.last_seen.items() if now - seen >= self.config.stable_after]
            for series in due:
                del self.last_seen[series]
        for series in due:
            self._process(series)
        return due

    def _process(self, series: str) -> None:
        from medsr.engine.batch import plan_outputs, upscale_files

        source = self.config.storage / "incoming" / series
        images = [p for p in sorted(source.glob("*.dcm")) if _has_pixels(p)]
        started = time.perf_counter()
        failures: list[str] = []
        if images:
            target = self.config.output / series
            plan = plan_outputs(images, target)
            results = upscale_files(plan, model=self.config.model, outscale=self.config.outscale,
                                    device=self.config.device, precision=self.config.precision, overwrite=True)
            failures = [str(r.error) for r in results if not r.ok]
        if not failures and images and self.config.send_to:
            failures = send_series(self.config.output / series, self.config.send_to, self.config.ae_title)
        if failures:
            self._move(source, "failed")
            (self.config.storage / "failed" / series / "reason.txt").write_text("\n".join(map(str, failures)) + "\n")
            log.error("series %s: failed (%s); moved to %s", series, failures[0], self.config.storage / "failed")
            return
        self._move(source, "done")
        log.info("series %s: %d image(s) upscaled x%g in %.1f s, %d other object(s) kept", series, len(images),
                 self.config.outscale, time.perf_counter() - started, len(list((self.config.storage / "done" / series)
                                                                              .glob("*.dcm"))) - len(images))

    def _move(self, source: Path, where: str) -> None:
        target = self.config.storage / where / source.name
        if target.exists():  # a series received again: the newer copy replaces the older
            shutil.rmtree(target)
        os.replace(source, target)


def parse_destination(text: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` -> (AE title, host, port)."""
    match = re.fullmatch(r"([^@]{1,16})@([^:]+):(\d{1,5})", text)
    if not match or not 0 < int(match[3]) <= 65535:
        raise ValueError(f"send_to {text!r}: give AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
    return match[1], match[2], int(match[3])


def send_series(folder: Path, destination: str, calling: str) -> list[str]:
    """C-STORE every file of ``folder`` to ``destination``; what failed, in words (empty: all sent)."""
    import pydicom
    from pynetdicom import AE

    title, host, port = parse_destination(destination)
    datasets = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    ae = AE(ae_title=calling)
    for sop_class in {str(ds.SOPClassUID) for ds in datasets}:
        ae.add_requested_context(sop_class)
    assoc = ae.associate(host, port, ae_title=title)
    if not assoc.is_established:
        return [f"sending to {destination}: the association was not accepted"]
    try:
        failed = []
        for ds in datasets:
            status = assoc.send_c_store(ds)
            if not status or int(status.Status) != SUCCESS:
                failed.append(f"sending {ds.SOPInstanceUID} to {destination}: status "
                              f"{hex(int(status.Status)) if status else 'none (connection lost)'}")
        return failed
    finally:
        assoc.release()


def _save_synced(dataset, path: Path) -> None:
    with open(path, "wb") as out:
        dataset.save_as(out, enforce_file_format=True)
        out.flush()
        os.fsync(out.fileno())


def _has_pixels(path: Path) -> bool:
    import pydicom

    try:
        # deferred: the element is found, its bytes are not read (the upscale reads them once)
        return "PixelData" in pydicom.dcmread(path, defer_size=256, specific_tags=["PixelData"])
    except Exception:  # a file the node itself wrote: unreadable means no image to upscale
        return False


def application_entity(node: Node):
    """A pynetdicom AE that stores every storage SOP class and admits the allowed callers."""
    try:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
    except ImportError:
        raise ValueError("the DICOM node needs pynetdicom: pip install 'medsr[node]'") from None

    ae = AE(ae_title=node.config.ae_title)
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(VERIFICATION)
    ae.require_calling_aet = list(node.config.allow)

    def on_store(event) -> int:
        log.info("from %s: %s", event.assoc.requestor.ae_title, event.dataset.get("SOPInstanceUID", "?"))
        return node.store(event.dataset, event.file_meta)

    return ae, [(evt.EVT_C_STORE, on_store)]


def serve(config: NodeConfig, *, stop: threading.Event | None = None, poll: float = 0.5) -> None:
    """Receive and upscale until ``stop`` is set (or interrupted)."""
    node = Node(config=config)
    ae, handlers = application_entity(node)
    server = ae.start_server((config.bind, config.port), block=False, evt_handlers=handlers)
    log.info("DICOM node %s listening on %s:%d; storage %s, output %s", config.ae_title, config.bind, config.port,
             config.storage, config.output)
    stop = stop or threading.Event()
    try:
        while not stop.is_set():
            node.process_stable()
            stop.wait(poll)
    finally:
        server.shutdown()
