"""How long the study page takes per question, itself (not the reader): a scripted reader answers a
20-question study in headless Chromium; the time from a click to the next question's images shown.

    python benchmarks/bench_study.py          # needs Debian's chromium and chromium-driver
"""

import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import uvicorn
from PIL import Image as PILImage
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from medsr.web import app as web
from medsr.web import study

work = Path(tempfile.mkdtemp())
for folder, shift in (("reference", 0), ("a", 5), ("b", -20)):
    (work / folder).mkdir()
    for i in range(10):
        base = np.random.default_rng(i).integers(0, 200, (512, 512, 3))
        PILImage.fromarray(np.clip(base + shift, 0, 255).astype(np.uint8)).save(work / folder / f"{i}.png")
path = work / "study.sqlite"
count = study.build({"a": work / "a", "b": work / "b"}, path, reference=work / "reference", regions=2, size=128)
with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
server = uvicorn.Server(uvicorn.Config(web.study_app(path), host="127.0.0.1", port=port, log_level="warning"))
threading.Thread(target=server.run, daemon=True).start()
while not server.started:
    time.sleep(0.05)
options = webdriver.ChromeOptions()
for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
    options.add_argument(argument)
options.binary_location = shutil.which("chromium")
driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
driver.get(f"http://127.0.0.1:{port}/")
driver.find_element("id", "reader").send_keys("timer")
driver.find_element("id", "start").click()
shown = ("['reference', 'left', 'right'].every(id => document.getElementById(id).complete && "
         "document.getElementById(id).naturalWidth > 0) && document.getElementById('progress').textContent")
times, clicked = [], time.perf_counter()
for number in range(1, count + 1):
    WebDriverWait(driver, 30, poll_frequency=0.01).until(
        lambda d, n=number: d.execute_script(f"return {shown} === 'question {n} of {count}'"))
    if number > 1:
        times.append(time.perf_counter() - clicked)
    clicked = time.perf_counter()
    driver.find_element("id", "choose-left").click()
WebDriverWait(driver, 30).until(lambda d: d.execute_script("return !document.getElementById('done').hidden"))
driver.quit()
print(f"{count} questions; page time per question (click to the next three images shown): "
      f"median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")
