"""`medsr view` and `medsr study`: the apps' answers (Starlette's test client), the study file, and the
pages in a real browser (Debian's headless Chromium through Selenium and chromium-driver).

Set ``MEDSR_SCREENSHOTS=docs/images`` to write the browser tests' screenshots there (the docs' ones
were made so)."""

import json
import os
import re
import shutil
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from starlette.testclient import TestClient

from medsr.cli import main
from medsr.web import app as web
from medsr.web import study, view

from .conftest import random_image

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def local_client(app) -> TestClient:
    """The app as a browser on this machine reaches it (http://127.0.0.1)."""
    return TestClient(app, base_url="http://127.0.0.1")


def folders(tmp_path, names=("a", "b", "c")):
    """inputs/ (40x32 RGB), outputs/ and outputs2/ (x4, 160x128), references/ (160x128), and a 16-bit gray pair."""
    for folder in ("inputs", "outputs", "outputs2", "references"):
        (tmp_path / folder).mkdir()
    for i, name in enumerate(names):
        PILImage.fromarray(random_image(32, 40, 3, seed=i)).save(tmp_path / "inputs" / f"{name}.png")
        big = random_image(128, 160, 3, seed=i).astype(int)
        for folder, shift in (("references", 0), ("outputs", 6), ("outputs2", -30)):
            PILImage.fromarray(np.clip(big + shift, 0, 255).astype(np.uint8)).save(tmp_path / folder / f"{name}.png")
    return tmp_path


# ---------------------------------------------------------------------------------------------
# The viewer's answers


def test_layers_are_matched_by_name_and_rendered_with_a_window(tmp_path):
    data = folders(tmp_path)
    gray = np.array([[0, 1000], [3000, 4095]], np.uint16)
    (tmp_path / "gray").mkdir()
    PILImage.fromarray(gray).save(tmp_path / "gray" / "g.png")  # 16-bit
    collection = view.open_collection([data / "inputs", data / "outputs"])
    assert [layer.name for layer in collection.layers] == ["inputs", "outputs"]
    assert [(i.name, [f.name for f in i.files]) for i in collection.items] == [
        ("a", ["a.png", "a.png"]), ("b", ["b.png", "b.png"]), ("c", ["c.png", "c.png"])]
    client = local_client(web.viewer_app(view.open_collection([tmp_path / "gray" / "g.png"])))
    info = client.get("/api/info/0/0").json()
    assert (info["width"], info["height"]) == (2, 2)
    assert (info["min"], info["max"]) == pytest.approx((0, 4095), abs=1e-3)  # its values, in 16-bit levels
    response = client.get("/api/image/0/0", params={"low": 1000, "high": 3000})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    rendered = np.asarray(PILImage.open(__import__("io").BytesIO(response.content)))
    # window 1000..3000 over 0..255: 0 and 1000 black, 3000 and above white (values outside it clip on screen only)
    np.testing.assert_array_equal(rendered, [[0, 0], [255, 255]])
    assert client.get("/api/image/0/0", params={"low": 5, "high": 4}).status_code == 400
    assert client.get("/api/image/0/0", params={"low": 5, "high": 5}).status_code == 200  # a blank image shows


def test_nothing_outside_the_opened_folders_can_be_read(tmp_path):
    data = folders(tmp_path)
    PILImage.fromarray(random_image(64, 64, 3, seed=9)).save(tmp_path / "secret.png")  # 64 wide: told apart
    (data / "inputs" / "link.png").symlink_to(tmp_path / "secret.png")  # a link out of the folder
    collection = view.open_collection([data / "inputs"])
    assert [i.name for i in collection.items] == ["a", "b", "c"]  # the link is not an item
    client = local_client(web.viewer_app(collection))
    for attempt in ("/api/image/0/0/../../../secret.png", "/api/image/..%2F..%2Fsecret.png/0",
                    "/api/image/9/0", "/api/image/0/5", "/api/image/-1/0", "/../secret.png",
                    "/api/map/0/0/../../secret.png", "/api/info/3/0", "/api/info/0/0?path=../secret.png"):
        response = client.get(attempt)
        assert response.status_code in (400, 404) or response.json()["width"] == 40, attempt
    widths = {client.get(f"/api/info/{i}/0").json()["width"] for i in range(3)}
    assert widths == {40}  # every item served is an opened one
    assert client.get("/api/map/0/0/other", params={"source": 0}).status_code == 400
    for broken in ("/api/dial/0/0", "/api/dial/0/0?f=1&x=1", "/api/image/0/0?low=nan&high=3",
                   "/api/dial/0/0?f=1&x=0&y=0&w=99999999999999999999&h=8"):
        assert client.get(broken).status_code == 400, broken  # a reason, never a crash


def test_another_interface_needs_the_token(tmp_path):
    data = folders(tmp_path)
    # the loopback needs it too (other users of the machine reach it), unless asked not to
    assert web.token_for("127.0.0.1") and web.token_for("::1")
    assert web.token_for("127.0.0.1", no_token=True) is None and web.token_for("localhost", no_token=True) is None
    with pytest.raises(ValueError, match="without a token is for the loopback"):
        web.token_for("0.0.0.0", no_token=True)
    token = web.token_for("0.0.0.0")
    assert token and len(token) >= 24 and web.token_for("0.0.0.0") != token  # random each time
    client = local_client(web.viewer_app(view.open_collection([data / "inputs"]), token=token))
    assert client.get("/api/items").status_code == 403
    assert client.get("/api/items", params={"token": "wrong"}).status_code == 403
    assert client.get("/", params={"token": token}).status_code == 200
    assert client.get("/api/items").status_code == 200  # the cookie set by the first answer
    assert TestClient(client.app).get("/api/items", params={"token": "é"}).status_code == 403  # not a crash
    # on the loopback, without a token: only this machine's names (a rebound DNS name is refused)
    local = local_client(web.viewer_app(view.open_collection([data / "inputs"])))
    assert local.get("/api/items").status_code == 200
    assert local.get("/api/items", headers={"host": "evil.example"}).status_code == 400
    # bound to another loopback address, the printed URL's host is accepted
    other = local_client(web.viewer_app(view.open_collection([data / "inputs"]), host="127.0.0.2"))
    assert other.get("/api/items", headers={"host": "127.0.0.2:8765"}).status_code == 200


def test_the_maps_and_the_dial(tmp_path, tiny_pair):
    data = folders(tmp_path)
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    client = local_client(web.viewer_app(view.open_collection([data / "inputs", data / "outputs"])))
    detail = client.get("/api/map/0/1/detail", params={"source": 0})
    consistency = client.get("/api/map/0/1/consistency", params={"source": 0})
    assert PILImage.open(__import__("io").BytesIO(detail.content)).size == (160, 128)  # at the output's size
    assert PILImage.open(__import__("io").BytesIO(consistency.content)).size == (40, 32)  # at the input's
    sharp, faithful = (client.get("/api/dial/0/0", params={"f": f, "x": 4, "y": 4, "w": 16, "h": 12}) for f in (0, 1))
    assert sharp.status_code == faithful.status_code == 200 and sharp.content != faithful.content
    assert PILImage.open(__import__("io").BytesIO(sharp.content)).size == (64, 48)  # x4 of the region
    assert client.get("/api/dial/0/0", params={"f": 2, "x": 0, "y": 0, "w": 8, "h": 8}).status_code == 400
    assert client.get("/api/dial/0/0", params={"f": 1, "x": 99, "y": 0, "w": 8, "h": 8}).status_code == 400
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before  # nothing written next to the files


# ---------------------------------------------------------------------------------------------
# The study file


def test_a_study_is_randomised_with_its_seed_and_keeps_its_answers(tmp_path):
    data = folders(tmp_path)
    methods = {"good": data / "outputs", "dark": data / "outputs2"}
    count = study.build(methods, tmp_path / "s.sqlite", reference=data / "references", regions=2, size=32, seed=7)
    assert count == 3 * 2  # three images, two regions, one pair of methods
    again = study.build(methods, tmp_path / "s2.sqlite", reference=data / "references", regions=2, size=32, seed=7)
    rows = [sqlite3.connect(p).execute("SELECT image, x, y, left_method FROM questions ORDER BY position").fetchall()
            for p in (tmp_path / "s.sqlite", tmp_path / "s2.sqlite")]
    assert again == count and rows[0] == rows[1]  # the seed gives the same study
    assert study.settings(tmp_path / "s.sqlite")["seed"] == "7"  # and is recorded
    study.build(methods, tmp_path / "s3.sqlite", reference=data / "references", regions=2, size=32, seed=8)
    other = sqlite3.connect(tmp_path / "s3.sqlite").execute("SELECT image, x, y, left_method FROM questions "
                                                            "ORDER BY position").fetchall()
    assert other != rows[0]  # another seed, another study
    assert {r[3] for r in rows[0]} == {"good", "dark"}  # each side holds each method sometimes
    with pytest.raises(ValueError, match="already exists"):
        study.build(methods, tmp_path / "s.sqlite")
    first, done, total = study.next_question(tmp_path / "s.sqlite", "Ann")
    assert (first.number, done, total) == (1, 0, 6)
    assert study.crop(tmp_path / "s.sqlite", first.id, "left").shape == (3, 32, 32)
    study.answer(tmp_path / "s.sqlite", reader="Ann", question_id=first.id, choice="left")
    with pytest.raises(ValueError, match="answered already"):
        study.answer(tmp_path / "s.sqlite", reader="Ann", question_id=first.id, choice="right")
    assert study.next_question(tmp_path / "s.sqlite", "Ann")[0].number == 2  # she resumes where she stopped
    with pytest.raises(ValueError, match="1 to 5"):
        study.answer(tmp_path / "s.sqlite", reader="Bo", question_id=first.id, choice="left", artefacts={"left": 9})
    for bad in (2.9, "2", True, None, 10**30):
        with pytest.raises(ValueError, match="question"):
            study.answer(tmp_path / "s.sqlite", reader="Bo", question_id=bad, choice="left")
    client = local_client(web.study_app(tmp_path / "s.sqlite"))
    plain = client.post("/api/answer", content=json.dumps({"reader": "Cy", "question": 2, "choice": "left"}),
                        headers={"content-type": "text/plain"})
    assert plain.status_code == 415  # what another site's page could send without asking first
    (tmp_path / "empty.sqlite").write_bytes(b"")
    with pytest.raises(ValueError, match="not a medsr study file"):
        study.results(tmp_path / "empty.sqlite")


def test_two_readers_at_once_do_not_collide(tmp_path):
    data = folders(tmp_path)
    path = tmp_path / "s.sqlite"
    total = study.build({"good": data / "outputs", "dark": data / "outputs2"}, path, regions=4, size=16)
    errors = []

    def read(reader):
        try:
            while (found := study.next_question(path, reader)[0]) is not None:
                study.answer(path, reader=reader, question_id=found.id, choice="left")
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(name,)) for name in ("Ann", "Bo")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    counts = dict(sqlite3.connect(path).execute("SELECT reader, COUNT(*) FROM answers GROUP BY reader"))
    assert counts == {"Ann": total, "Bo": total}


def test_results_by_hand(tmp_path):
    """Two readers, four questions: Ann prefers 'good' every time, Bo three times in four."""
    data = folders(tmp_path, names=("a", "b"))
    path = tmp_path / "s.sqlite"
    study.build({"good": data / "outputs", "dark": data / "outputs2"}, path, regions=2, size=32, seed=1)
    questions = [study.question(path, i) for i in range(1, 5)]
    for q in questions:
        good_side = "left" if q.left == "good" else "right"
        other = "right" if good_side == "left" else "left"
        study.answer(path, reader="Ann", question_id=q.id, choice=good_side)
        study.answer(path, reader="Bo", question_id=q.id, choice=good_side if q.id != 4 else other)
    found = study.results(path)
    assert found["pooled"]["good"]["preferred"] == 7 and found["pooled"]["good"]["shown"] == 8
    assert found["per_reader"]["Ann"]["good"]["share"] == 1.0 and found["per_reader"]["Bo"]["good"]["share"] == 0.75
    # Wilson interval of 7/8 (z = 1.96): 0.529 .. 0.978, worked out by hand from the formula
    low, high = found["pooled"]["good"]["ci95"]
    assert low == pytest.approx(0.5291, abs=1e-3) and high == pytest.approx(0.9776, abs=1e-3)
    [pair] = found["agreement"]
    # kappa of the side chosen: observed 3/4; chance = sum over left/right of the two readers' shares
    sides = {r: [study_row[0] for study_row in sqlite3.connect(path).execute(
        "SELECT choice FROM answers WHERE reader = ? ORDER BY question", (r,))] for r in ("Ann", "Bo")}
    chance = sum(sides["Ann"].count(s) / 4 * sides["Bo"].count(s) / 4 for s in ("left", "right"))
    assert pair["agreement"] == 0.75 and pair["kappa"] == pytest.approx((0.75 - chance) / (1 - chance))
    page = study.write_results(study.results(path), tmp_path / "results")
    assert "<svg" in page.read_text()
    assert json.loads((tmp_path / "results" / "results.json").read_text())["answers"] == 8


def test_the_interval_that_resamples_readers_and_images(tmp_path):
    """Answers about one image (its regions) and from one reader are not independent. A method that
    wins every region of one image and loses every region of the other has a pooled share of 1/2;
    Wilson's interval, counting 40 answers as independent, is narrow; resampling the two images (and
    the readers) gives shares from 0 to 1, and the interval must say so."""
    data = folders(tmp_path, names=("a", "b"))
    path = tmp_path / "s.sqlite"
    study.build({"good": data / "outputs", "dark": data / "outputs2"}, path, regions=10, size=16, seed=3)
    for q in (study.question(path, i) for i in range(1, 21)):
        wins = q.image == "a"
        for reader in ("Ann", "Bo"):
            good_side = "left" if q.left == "good" else "right"
            study.answer(path, reader=reader, question_id=q.id,
                         choice=good_side if wins else ("right" if good_side == "left" else "left"))
    good = study.results(path)["pooled"]["good"]
    assert good["share"] == 0.5 and good["shown"] == 40
    wilson_low, wilson_high = good["ci95"]
    assert wilson_high - wilson_low < 0.32  # 0.352 .. 0.648
    low, high = good["ci95_readers_images"]
    assert low == 0.0 and high == 1.0  # one image drawn twice is a possible resample, either way
    assert study.results(path)["pooled"]["good"]["ci95_readers_images"] == [low, high]  # seeded: the same


def test_study_commands(tmp_path, capsys):
    data = folders(tmp_path)
    out = tmp_path / "study.sqlite"
    assert main(["study", "build", "--method", f"good={data / 'outputs'}", "--method", f"dark={data / 'outputs2'}",
                 "--reference", str(data / "references"), "--regions", "1", "--size", "32", "-o", str(out)]) == 0
    assert "3 questions (seed 0)" in capsys.readouterr().out
    assert main(["study", "build", "--method", "only", "-o", str(tmp_path / "x.sqlite")]) == 2
    assert main(["study", "results", str(tmp_path / "missing.sqlite")]) == 2
    assert "no such study file" in capsys.readouterr().err
    assert main(["view", str(tmp_path / "nothing-here")]) == 2
    assert main(["view", str(data / "inputs"), "--port", "0"]) == 2


# ---------------------------------------------------------------------------------------------
# In a real browser


@contextmanager
def serving(app):
    """The app on a free port of 127.0.0.1, in a thread of this process."""
    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("the browser tests need Debian's chromium and chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, script, timeout=60):
    """Poll a JavaScript expression until it is true."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: d.execute_script(f"return {script}"))


def set_value(driver, element, value, event):
    """Set a control's value as a person would, and fire the event the page listens to."""
    driver.execute_script(f"const e = document.getElementById('{element}'); e.value = '{value}'; "
                          f"e.dispatchEvent(new Event('{event}'))")


def screenshot(driver, name):
    folder = os.environ.get("MEDSR_SCREENSHOTS")
    if folder:
        driver.save_screenshot(str(Path(folder) / name))


def test_viewer_in_a_browser_zooms_together_and_moves_the_dial(tmp_path, tiny_pair, browser):
    data = folders(tmp_path)
    with serving(web.viewer_app(view.open_collection([data / "inputs", data / "outputs", data / "references"]))) as url:
        browser.get(url)
        loaded = "[...document.querySelectorAll('.panel img')].every(i => i.complete && i.naturalWidth > 0)"
        wait_for(browser, f"document.querySelectorAll('.panel img').length === 3 && {loaded}")
        before = browser.find_element("id", "zoom-level").text
        browser.find_element("id", "zoom-in").click()
        after = browser.find_element("id", "zoom-level").text
        assert int(after.rstrip("%")) == 2 * int(before.rstrip("%"))
        transforms = browser.execute_script("return [...document.querySelectorAll('.panel img')]"
                                            ".map(i => i.style.transform)")
        assert len(set(transforms)) == 1  # one view for every panel: zoomed and panned together
        set_value(browser, "dial", "0.5", "input")
        wait_for(browser, "document.getElementById('dial-image').dataset.fidelity === '0.5' && "
                          "document.getElementById('dial-image').naturalWidth > 0")
        set_value(browser, "low", "50", "change")
        windowed = "[...document.querySelectorAll('.panel img')].every(i => i.src.includes('low=50'))"
        wait_for(browser, f"{windowed} && {loaded}")
        set_value(browser, "mode", "swipe", "change")
        wait_for(browser, f"document.getElementById('swipe-top') !== null && {loaded}")
        screenshot(browser, "viewer-swipe.png")


def test_study_in_a_browser_lands_in_sqlite_and_in_the_results(tmp_path, browser):
    data = folders(tmp_path)
    path = tmp_path / "study.sqlite"
    study.build({"good": data / "outputs", "dark": data / "outputs2"}, path, reference=data / "references",
                regions=1, size=64, seed=3)
    with serving(web.study_app(path)) as url:
        browser.get(url)
        browser.find_element("id", "reader").send_keys("Reader One")
        browser.find_element("id", "start").click()
        for number in range(1, 4):
            shown = "document.getElementById('right').complete && document.getElementById('right').naturalWidth > 0"
            progress = f"document.getElementById('progress').textContent === 'question {number} of 3'"
            wait_for(browser, f"{progress} && {shown}")
            if number == 1:
                screenshot(browser, "study-question.png")
            browser.find_element("id", "choose-left" if number != 2 else "choose-right").click()
        wait_for(browser, "!document.getElementById('done').hidden")
    stored = sqlite3.connect(path).execute("SELECT reader, choice FROM answers ORDER BY rowid").fetchall()
    assert stored == [("Reader One", "left"), ("Reader One", "right"), ("Reader One", "left")]
    found = study.results(path)
    assert found["answers"] == 3 and sum(v["preferred"] for v in found["pooled"].values()) == 3
    page = study.write_results(study.results(path), tmp_path / "results")
    browser.get(page.as_uri())
    assert "3 answers to 3 questions by 1 reader(s)" in browser.find_element("tag name", "body").text
    screenshot(browser, "study-results.png")


def test_a_dicom_file_is_viewed_in_its_own_units_and_window():
    from pydicom.data import get_testdata_file

    client = local_client(web.viewer_app(view.open_collection([get_testdata_file("CT_small.dcm")])))
    info = client.get("/api/info/0/0").json()
    assert info["modality"] == "CT" and info["unit"] == "HU" and (info["width"], info["height"]) == (128, 128)
    # pydicom's own reading, through RescaleSlope and RescaleIntercept, gives the same HU range
    dataset = __import__("pydicom").dcmread(get_testdata_file("CT_small.dcm"))
    hu = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    assert (info["min"], info["max"]) == pytest.approx((hu.min(), hu.max()), abs=0.5)
    full = client.get("/api/image/0/0", params={"low": info["min"], "high": info["max"]}).content
    narrow = client.get("/api/image/0/0", params={"low": 0, "high": 100}).content
    assert full != narrow
    soft = np.asarray(PILImage.open(__import__("io").BytesIO(narrow)))
    np.testing.assert_array_equal(soft[hu < 0], 0)  # below the window: black
    np.testing.assert_array_equal(soft[hu > 100], 255)  # above: white
    mr = local_client(web.viewer_app(view.open_collection([get_testdata_file("MR_small.dcm")])))
    assert mr.get("/api/info/0/0").json()["window"] == [-200, 1400]  # the file's own window: centre 600, width 1600


def test_the_viewer_on_the_bundled_examples(tmp_path, browser):
    """What the README shows: the examples beside their Lanczos x4 (as an upscale output folder would
    sit beside its inputs), zoomed to pixel level together. Makes docs/images/viewer.png."""
    from dataclasses import replace

    from medsr.core.resize import resize_lanczos
    from medsr.formats.io import image_files, read_image, write_image

    examples = Path(__file__).parents[1] / "examples"
    outputs = tmp_path / "lanczos-x4"
    for path in image_files(examples):
        image = read_image(path)
        height, width = image.size
        write_image(outputs / path.name, replace(image, pixels=resize_lanczos(image.pixels, 4 * height, 4 * width)))
    with serving(web.viewer_app(view.open_collection([examples, outputs]))) as url:
        browser.get(url)
        loaded = "[...document.querySelectorAll('.panel img')].every(i => i.complete && i.naturalWidth > 0)"
        wait_for(browser, f"document.querySelectorAll('.panel img').length === 2 && {loaded}")
        names = browser.execute_script("return [...document.getElementById('item').options].map(o => o.text)")
        assert names == ["cxr_00000404_000_lr", "cxr_00000404_000_lr16", "fundus_hrf_01_h_lr"]
        set_value(browser, "item", "2", "change")
        wait_for(browser, f"document.querySelectorAll('.panel img').length === 2 && {loaded}")
        for _ in range(3):
            browser.find_element("id", "zoom-in").click()
        wait_for(browser, "document.getElementById('dial-image').naturalWidth > 0")
        screenshot(browser, "viewer.png")


def test_a_study_from_an_evaluate_report(tmp_path, capsys):
    """evaluate --save-outputs writes every image's outputs; study build --report asks about its models
    with its ground truth as the reference; medsr view opens the same folders."""
    (tmp_path / "data").mkdir()
    for i in range(2):
        PILImage.fromarray(random_image(512, 512, 3, seed=i)).save(tmp_path / "data" / f"eye{i}.png")
    assert main(["evaluate", str(tmp_path / "data"), "--protocol", "retina-x2", "--baselines", "bicubic,lanczos",
                 "--reference", "bicubic", "--figures", "1", "--save-outputs", "-o", str(tmp_path / "report")]) == 0
    outputs = tmp_path / "report" / "outputs"
    assert sorted(p.name for p in outputs.iterdir()) == ["LR", "bicubic", "ground truth", "lanczos"]
    assert view.load(outputs / "ground truth" / "eye0.png").size == (512, 512)
    assert main(["study", "build", "--report", str(tmp_path / "report"), "--regions", "2", "--size", "64",
                 "-o", str(tmp_path / "s.sqlite")]) == 0
    config = study.settings(tmp_path / "s.sqlite")
    assert sorted(json.loads(config["methods"])) == ["bicubic", "lanczos"]
    assert config["reference"].endswith("ground truth")
    assert "4 questions" in capsys.readouterr().out  # 2 images x 2 regions x 1 pair
    collection = view.open_collection([outputs / "LR", outputs / "bicubic", outputs / "ground truth"])
    assert [i.name for i in collection.items] == ["eye0", "eye1"]
    figures = view.open_collection([tmp_path / "report"])  # a report folder: a layer of its figures
    assert [i.name for i in figures.items] == ["eye0"] and figures.items[0].files[0].parent.name == "figures"


@pytest.mark.parametrize("command", ["view", "study"])
def test_the_readme_commands_serve_until_stopped(tmp_path, command):
    """`medsr view examples OUT` and `medsr study serve STUDY` as a user runs them: they print the URL,
    answer on it, and stop on Ctrl+C (SIGINT) with exit status 0."""
    import signal
    import subprocess
    import sys
    import urllib.request

    data = folders(tmp_path)
    examples = Path(__file__).parents[1] / "examples"
    if command == "study":
        study.build({"good": data / "outputs", "dark": data / "outputs2"}, tmp_path / "s.sqlite", size=32)
        args, probe = ["study", "serve", str(tmp_path / "s.sqlite")], "api/next?reader=x"
    else:
        args, probe = ["view", str(examples), str(data / "outputs")], "api/items"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "medsr.cli", *args, "--port", str(port), "--no-browser"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = ""
        while process.poll() is None and "serving on" not in url:  # the URL, with its token, as a user reads it
            url = process.stdout.readline()
        token = re.search(r"\?token=([\w-]+)", url)
        assert token, url
        for _ in range(300):
            try:
                separator = "&" if "?" in probe else "?"
                probe_url = f"http://127.0.0.1:{port}/{probe}{separator}token={token[1]}"
                with urllib.request.urlopen(probe_url, timeout=2) as response:
                    body = json.loads(response.read())
                break
            except OSError:
                time.sleep(0.1)
        else:
            ended = process.poll() is not None
            pytest.fail("the server did not answer" + (": " + process.stderr.read() if ended else ""))
        assert ("items" in body) if command == "view" else (body["total"] == 6)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"serving on http://127.0.0.1:{port}/?token={token[1]} (Ctrl+C stops)" in url + out


def test_study_crops_are_shown_in_the_images_window(tmp_path):
    """12-bit data in 16-bit PNGs: a crop spans the screen's range (as the viewer starts), not 1/16 of it."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        PILImage.fromarray((random_image(64, 64, 1, np.uint16, seed=1).squeeze() >> 4).astype(np.uint16)).save(
            tmp_path / folder / "x.png")
    study.build({"a": tmp_path / "a", "b": tmp_path / "b"}, tmp_path / "s.sqlite", regions=1, size=64)
    shown = study.crop(tmp_path / "s.sqlite", 1, "left")
    assert shown.min() == pytest.approx(0, abs=1e-6) and shown.max() == pytest.approx(1, abs=1e-6)


def test_a_file_turned_into_a_link_after_opening_is_not_served(tmp_path):
    """Paths are resolved again at every request: a listed file replaced by a link to a file outside
    the opened folders (after the server started) is refused, as is a report whose figures/ links out."""
    data = folders(tmp_path)
    secret = tmp_path / "secret.png"
    PILImage.fromarray(np.full((8, 8), 200, np.uint8)).save(secret)
    collection = view.open_collection([data / "inputs"])
    client = local_client(web.viewer_app(collection))
    assert client.get("/api/info/0/0").status_code == 200
    listed = collection.file(0, 0)
    listed.unlink()
    listed.symlink_to(secret)
    assert client.get("/api/info/0/0").status_code == 403
    assert client.get("/api/image/0/0").status_code == 403
    report = tmp_path / "report"
    report.mkdir()
    (report / "summary.json").write_text("{}")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(outside / "eye0.png")
    (report / "figures").symlink_to(outside)
    with pytest.raises(ValueError, match="no images to view"):
        view.open_collection([report])


def test_study_answers_are_bounded_and_checked(tmp_path):
    data = folders(tmp_path)
    study.build({"good": data / "outputs", "dark": data / "outputs2"}, tmp_path / "s.sqlite", size=32)
    client = local_client(web.study_app(tmp_path / "s.sqlite"))
    headers = {"content-type": "application/json"}
    big = b'{"reader": "' + b"x" * (web.MAX_BODY + 10) + b'"}'
    assert client.post("/api/answer", content=big, headers=headers).status_code == 413
    deep = b"[" * 20_000 + b"]" * 20_000  # 40 KB: within the bound, deeper than the parser goes
    assert client.post("/api/answer", content=deep, headers=headers).status_code == 400
    for reader in (["a", "b"], {"name": "a"}):
        body = json.dumps({"reader": reader, "question": 1, "choice": "left"})
        response = client.post("/api/answer", content=body, headers=headers)
        assert response.status_code == 400 and "reader and choice must be text" in response.json()["error"]


def test_study_results_never_replace_earlier_results_unasked(tmp_path, capsys):
    data = folders(tmp_path)
    study.build({"good": data / "outputs", "dark": data / "outputs2"}, tmp_path / "s.sqlite", size=32)
    out = tmp_path / "results"
    assert main(["study", "results", str(tmp_path / "s.sqlite"), "-o", str(out)]) == 0
    first = (out / "results.html").read_bytes()
    (out / "results.html").write_bytes(b"my notes")
    assert main(["study", "results", str(tmp_path / "s.sqlite"), "-o", str(out)]) == 2
    assert "already holds results" in capsys.readouterr().err
    assert (out / "results.html").read_bytes() == b"my notes"
    assert main(["study", "results", str(tmp_path / "s.sqlite"), "-o", str(out), "--overwrite"]) == 0
    assert (out / "results.html").read_bytes() == first
