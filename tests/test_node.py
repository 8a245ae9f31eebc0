"""The DICOM node (issue 34, first part): instances sent by a real C-STORE SCU (pynetdicom) are
stored atomically, a stable series is upscaled into its derived series, a node killed before
processing finishes on restart, callers not allowed are rejected, and objects without pixels are
kept, never upscaled."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

pynetdicom = pytest.importorskip("pynetdicom", reason="pynetdicom is in the dev extras (pip install -e '.[dev]')")

from medsr.engine.node import Node, NodeConfig, serve  # noqa: E402

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _instance(sop_class: str) -> Dataset:
    """An empty instance of ``sop_class`` with a new SOP Instance UID and its file meta."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _ct_series(count=3, size=16):
    """A small CT series in HU (generated), one StudyInstanceUID and SeriesInstanceUID."""
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    slices = []
    for index in range(count):
        ds = _instance(CT_IMAGE)
        ds.PatientName, ds.PatientID, ds.Modality = "Node^Test", "NODE-1", "CT"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 3.0 * index], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.8, 0.8], 3.0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        stored = np.clip(np.cumsum(rng.normal(0, 40, (size, size)), 0) + 1000, 0, 4095).astype(np.uint16)
        ds.set_pixel_data(stored, "MONOCHROME2", 12)
        slices.append(ds)
    return slices


def _report(series_of):
    ds = _instance(BASIC_TEXT_SR)
    ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "SR", series_of.StudyInstanceUID, generate_uid()
    ds.PatientName, ds.PatientID = "Node^Test", "NODE-1"
    return ds


def _port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return free.getsockname()[1]


def _send(port: int, datasets, calling="SENDER") -> list[int]:
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    for uid in {ds.SOPClassUID for ds in datasets}:
        ae.add_requested_context(uid, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDSR")
    if not assoc.is_established:
        return []
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


@pytest.fixture
def node_running(tmp_path):
    port = _port()
    config = NodeConfig(storage=tmp_path / "storage", output=tmp_path / "out", port=port, stable_after=0.3,
                        allow=("SENDER",), model="lanczos-projected", device="cpu", precision="fp32")
    stop = threading.Event()
    thread = threading.Thread(target=serve, args=(config,), kwargs={"stop": stop, "poll": 0.1}, daemon=True)
    thread.start()
    time.sleep(0.5)
    yield config
    stop.set()
    thread.join(timeout=10)


def _wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_series_sent_by_c_store_comes_out_as_one_derived_series(node_running):
    config = node_running
    series = _ct_series()
    assert _send(config.port, [*series, _report(series[0])]) == [0, 0, 0, 0]
    folder = config.output / series[0].SeriesInstanceUID
    assert _wait_for(lambda: len(list(folder.glob("*.dcm"))) == 3)
    outputs = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
    assert {o.StudyInstanceUID for o in outputs} == {series[0].StudyInstanceUID}
    assert len({o.SeriesInstanceUID for o in outputs}) == 1
    assert outputs[0].SeriesInstanceUID != series[0].SeriesInstanceUID
    assert {o.FrameOfReferenceUID for o in outputs} == {series[0].FrameOfReferenceUID}
    by_source = {o.SourceImageSequence[0].ReferencedSOPInstanceUID: o for o in outputs}
    for source in series:  # each output averages back to its source (x2, integer: exactly)
        out = by_source[source.SOPInstanceUID].pixel_array.astype(np.float64)
        assert out.shape == (32, 32) and "DERIVED" in by_source[source.SOPInstanceUID].ImageType
        assert np.array_equal(out.reshape(16, 2, 16, 2).mean(axis=(1, 3)), source.pixel_array)
    assert _wait_for(lambda: (config.storage / "done" / series[0].SeriesInstanceUID).is_dir())
    def report_kept() -> bool:  # stored, its series done, nothing upscaled from it
        return any(pydicom.dcmread(p).SOPClassUID == BASIC_TEXT_SR for p in (config.storage / "done").glob("*/*.dcm"))

    assert _wait_for(report_kept)
    assert len(list(config.output.iterdir())) == 1


def test_a_caller_not_allowed_is_rejected(node_running):
    assert _send(node_running.port, _ct_series(1), calling="STRANGER") == []
    assert not list((node_running.storage / "incoming").iterdir())


def test_a_node_killed_before_processing_finishes_on_restart(tmp_path):
    config = NodeConfig(storage=tmp_path / "storage", output=tmp_path / "out", stable_after=0.0,
                        model="lanczos-projected", device="cpu", precision="fp32")
    series = _ct_series(2)
    node = Node(config=config)
    for ds in series:  # acknowledged, on disk; then the process is gone
        assert node.store(ds, ds.file_meta) == 0
    del node
    restarted = Node(config=config)
    assert restarted.process_stable() == [series[0].SeriesInstanceUID]
    assert len(list((config.output / series[0].SeriesInstanceUID).glob("*.dcm"))) == 2
    # received again: the same derived series (UIDs from the source's), not a second one
    first = {pydicom.dcmread(p).SOPInstanceUID for p in (config.output / series[0].SeriesInstanceUID).glob("*.dcm")}
    for ds in series:
        restarted.store(ds, ds.file_meta)
    restarted.process_stable(now=time.monotonic() + 1)
    again = {pydicom.dcmread(p).SOPInstanceUID for p in (config.output / series[0].SeriesInstanceUID).glob("*.dcm")}
    assert again == first


def test_a_series_that_fails_is_moved_aside_with_the_reason(tmp_path):
    config = NodeConfig(storage=tmp_path / "storage", output=tmp_path / "out", stable_after=0.0,
                        model="lanczos-projected", device="cpu", precision="fp32")
    node = Node(config=config)
    [ds] = _ct_series(1)
    ds.BitsAllocated = 32  # pixels medsr cannot take
    assert node.store(ds, ds.file_meta) == 0
    node.process_stable()
    reason = config.storage / "failed" / ds.SeriesInstanceUID / "reason.txt"
    assert reason.is_file() and "bits allocated" in reason.read_text()


def test_config_checks():
    with pytest.raises(ValueError, match="ae_title"):
        NodeConfig(storage=None, output=None, ae_title="A" * 17)
    with pytest.raises(ValueError, match="port"):
        NodeConfig(storage=None, output=None, port=70000)


def test_the_command_receives_upscales_and_stops_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys

    port = _port()
    process = subprocess.Popen([sys.executable, "-m", "medsr.cli", "dicom-node", "--storage", str(tmp_path / "s"),
                                "--output", str(tmp_path / "o"), "--port", str(port), "--stable-after", "0.2",
                                "--model", "lanczos-projected", "--precision", "fp32"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "DICOM node MEDSR on 127.0.0.1" in process.stdout.readline()
        series = _ct_series(2)
        assert _wait_for(lambda: _send(port, series) == [0, 0])
        assert _wait_for(lambda: len(list((tmp_path / "o" / series[0].SeriesInstanceUID).glob("*.dcm"))) == 2)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err


def test_the_derived_instance_says_what_archives_expect(tmp_path):
    """PS3.3 of a derived image: derivation code DCM 113085, the source image with purpose DCM 121322,
    the source series, the processing equipment (DCM 109102), a series description that says so."""
    import medsr

    [ds] = _ct_series(1)
    ds.SeriesDescription = "Thorax 3mm"
    ds.save_as(tmp_path / "in.dcm", enforce_file_format=True)
    medsr.write_image(tmp_path / "out.dcm", medsr.upscale(tmp_path / "in.dcm", model="lanczos-projected", outscale=2))
    out = pydicom.dcmread(tmp_path / "out.dcm")
    assert out.DerivationCodeSequence[0].CodeValue == "113085"
    assert out.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert out.ReferencedSeriesSequence[0].SeriesInstanceUID == ds.SeriesInstanceUID
    equipment = out.ContributingEquipmentSequence[-1]
    assert equipment.Manufacturer == "medsr" and equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert out.SeriesDescription == "Thorax 3mm (medsr super-resolution)" and len(out.SeriesDescription) <= 64
    assert list(out.ImageType[:2]) == ["DERIVED", "SECONDARY"]


def test_dciodvfy_finds_nothing_new_in_a_derived_image(tmp_path):
    """dicom3tools' validator, as archives check: every finding on the output is one it has on the source."""
    import shutil
    import subprocess

    import medsr

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (Debian: dicom3tools; .ci/run installs it)")
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm")
    medsr.write_image(tmp_path / "out.dcm", medsr.upscale(source, model="lanczos-projected", outscale=2))

    def findings(path) -> set[str]:
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        return {line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("Error", "Warning"))}

    assert findings(tmp_path / "out.dcm") - findings(source) == set()


def test_the_derived_series_is_sent_on_by_c_store(tmp_path):
    """--send-to: a second Storage SCP (pynetdicom, as a PACS) receives every derived instance."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    received = []

    def on_store(event):
        received.append(event.dataset)
        return 0x0000

    pacs = AE(ae_title="PACS")
    pacs.supported_contexts = AllStoragePresentationContexts
    pacs_port = _port()
    server = pacs.start_server(("127.0.0.1", pacs_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        config = NodeConfig(storage=tmp_path / "s", output=tmp_path / "o", stable_after=0.0, device="cpu",
                            model="lanczos-projected", precision="fp32", send_to=f"PACS@127.0.0.1:{pacs_port}")
        node = Node(config=config)
        series = _ct_series(2)
        for ds in series:
            node.store(ds, ds.file_meta)
        node.process_stable()
        assert len(received) == 2 and {d.StudyInstanceUID for d in received} == {series[0].StudyInstanceUID}
        assert all(d.SeriesInstanceUID != series[0].SeriesInstanceUID for d in received)
    finally:
        server.shutdown()
    # the archive gone: the series is moved aside with the reason, and nothing is lost
    again = NodeConfig(storage=tmp_path / "s2", output=tmp_path / "o2", stable_after=0.0, device="cpu",
                       model="lanczos-projected", precision="fp32", send_to=f"PACS@127.0.0.1:{pacs_port}")
    node = Node(config=again)
    for ds in series:
        node.store(ds, ds.file_meta)
    node.process_stable()
    assert "the association was not accepted" in (tmp_path / "s2/failed" / series[0].SeriesInstanceUID /
                                                  "reason.txt").read_text()
    with pytest.raises(ValueError, match="AET@HOST:PORT"):
        NodeConfig(storage=tmp_path, output=tmp_path, send_to="nowhere")
