"""medsr's DICOM node against a real Orthanc (Debian's `orthanc`; `.ci/run` installs it): a CT series
is uploaded to Orthanc, Orthanc is asked over its REST API to send it to medsr, medsr sends the
derived series back, and Orthanc's study then holds both series, the derived one complete, with
pixels that average back to the source's."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.request

import numpy as np
import pydicom
import pytest

from .test_node import _ct_series, _port, _wait_for

pytest.importorskip("pynetdicom", reason="pynetdicom is in the dev extras (pip install -e '.[dev]')")
ORTHANC = shutil.which("Orthanc")
pytestmark = pytest.mark.skipif(ORTHANC is None,
                                reason="Orthanc is not installed (Debian: orthanc; .ci/run installs it)")


def _rest(base: str, path: str, data: bytes | None = None, method: str | None = None):
    request = urllib.request.Request(base + path, data=data, method=method or ("POST" if data is not None else "GET"))
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body


@pytest.fixture
def orthanc(tmp_path):
    http, dicom, node = _port(), _port(), _port()
    config = {"Name": "medsr-test", "StorageDirectory": str(tmp_path / "orthanc-db"),
              "IndexDirectory": str(tmp_path / "orthanc-db"), "HttpPort": http, "DicomPort": dicom,
              "DicomAet": "ORTHANC", "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
              "DicomModalities": {"medsr": ["MEDSR", "127.0.0.1", node]}, "Plugins": []}
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    process = subprocess.Popen([ORTHANC, str(tmp_path / "orthanc.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{http}"
    try:
        def up() -> bool:
            try:
                return bool(_rest(base, "/system"))
            except OSError:
                return process.poll() is not None  # ended: stop waiting, fail below
        assert _wait_for(up, 60) and process.poll() is None, process.stderr.read() if process.poll() else ""
        yield base, dicom, node
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_orthanc_routes_a_series_to_medsr_and_gets_the_derived_series_back(orthanc, tmp_path):
    from medsr.engine.node import NodeConfig, serve

    base, orthanc_port, node_port = orthanc
    config = NodeConfig(storage=tmp_path / "storage", output=tmp_path / "out", port=node_port, stable_after=0.5,
                        allow=("ORTHANC",), model="lanczos-projected", device="cpu", precision="fp32",
                        send_to=f"ORTHANC@127.0.0.1:{orthanc_port}")
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(config,), kwargs={"stop": stop, "poll": 0.1}, daemon=True)
    thread.start()
    try:
        series = _ct_series(3)
        for index, ds in enumerate(series):
            ds.save_as(tmp_path / f"{index}.dcm", enforce_file_format=True)
            uploaded = _rest(base, "/instances", (tmp_path / f"{index}.dcm").read_bytes())
        study = uploaded["ParentStudy"]
        _rest(base, "/modalities/medsr/store", uploaded["ParentSeries"].encode())  # Orthanc -> medsr

        def both_series_complete() -> bool:
            found = _rest(base, f"/studies/{study}/series")
            return len(found) == 2 and all(len(s["Instances"]) == 3 for s in found)

        assert _wait_for(both_series_complete, 60)
    finally:
        stop.set()
        thread.join(timeout=10)
    found = _rest(base, f"/studies/{study}/series")
    derived = next(s for s in found if s["MainDicomTags"]["SeriesInstanceUID"] != series[0].SeriesInstanceUID)
    assert derived["MainDicomTags"].get("SeriesDescription", "").endswith("(medsr super-resolution)")
    sources = {ds.SOPInstanceUID: ds for ds in series}
    for instance in derived["Instances"]:
        (tmp_path / "got.dcm").write_bytes(_rest(base, f"/instances/{instance}/file"))
        out = pydicom.dcmread(tmp_path / "got.dcm")
        source = sources[out.SourceImageSequence[0].ReferencedSOPInstanceUID]
        assert out.FrameOfReferenceUID == source.FrameOfReferenceUID and "DERIVED" in out.ImageType
        means = out.pixel_array.astype(np.float64).reshape(16, 2, 16, 2).mean(axis=(1, 3))
        assert np.array_equal(means, source.pixel_array)  # the values contract, through the archive
