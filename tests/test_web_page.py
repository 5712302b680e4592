"""The status page of a real controller: its URL file, its token, ``ipcluster``, a browser.

Real ``ipcontroller``/``ipengine`` processes on 127.0.0.1 (:mod:`tests.cluster`). The
browser test drives Debian's ``chromium`` through ``chromium-driver`` with ``selenium``
(the test extra) and skips, naming what is missing, without them.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from ipkernel.adapters.web.access import WEB_URL_FILE, read_url_file
from tests.cluster import DEADLINE, Cluster, child_env, stop_process

#: How the tests start Chromium: headless, and quiet on the network.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1000",
)


def fetch(url: str) -> tuple[int, bytes]:
    """GET ``url``: ``(status, body)``, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=DEADLINE) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def without_token(url: str) -> str:
    return url.split("?", 1)[0]


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium (pip install -e '.[test]')"
    for program, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver")):
        if shutil.which(program) is None:
            return f"needs Debian's {package} (apt-get install chromium chromium-driver)"
    return None


def png_colors(data: bytes) -> int:
    """How many distinct colours an 8-bit RGB or RGBA PNG (as Chromium writes) shows."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color_type = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat.append(body)
    channels = {2: 3, 6: 4}[color_type]
    if depth != 8:
        raise ValueError(f"a {depth}-bit PNG")
    stride = width * channels
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(height, stride + 1)
    image = np.zeros((height, stride), np.uint8)
    previous = np.zeros(stride, np.uint8)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].copy()
        if kind == 1:  # sub: a running sum per channel (uint8 wraps as the filter does)
            line = np.cumsum(line.reshape(width, channels), axis=0, dtype=np.uint8).ravel()
        elif kind == 2:  # up
            line += previous
        elif kind in (3, 4):  # average, Paeth: byte by byte
            out = line.astype(np.int32)
            up = previous.astype(np.int32)
            for x in range(stride):
                left = out[x - channels] if x >= channels else 0
                if kind == 3:
                    out[x] = (out[x] + (left + up[x]) // 2) & 255
                else:
                    corner = up[x - channels] if x >= channels else 0
                    p = left + up[x] - corner
                    pa, pb, pc = abs(p - left), abs(p - up[x]), abs(p - corner)
                    pred = left if pa <= pb and pa <= pc else up[x] if pb <= pc else corner
                    out[x] = (out[x] + pred) & 255
            line = out.astype(np.uint8)
        image[y] = previous = line
    return len(np.unique(image.reshape(-1, channels), axis=0))


class StatusPageTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_url_file_token_and_status(self):
        """The controller writes its page's URL (0600); with the token the page and
        /api/status answer, showing the engines; without it, or with another, 403."""
        cluster = Cluster(self, n=2)
        yield cluster.start()
        path = cluster.security / WEB_URL_FILE
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        url = read_url_file(cluster.security)
        self.assertRegex(url, r"^http://127\.0\.0\.1:\d+/\?token=[\w-]{43}$")
        code, body = fetch(url)
        self.assertEqual(code, 200)
        self.assertIn(b"ipkernel controller", body)
        base = without_token(url)
        for wrong in (base, base + "?token=", base + "?token=" + "x" * 43, base + "api/status"):
            self.assertEqual(fetch(wrong)[0], 403, wrong)
        code, body = fetch(base + "api/status?" + url.split("?", 1)[1])
        status = json.loads(body)
        self.assertEqual(
            sorted(e["pid"] for e in status["engines"]), sorted(e.pid for e in cluster.engines)
        )
        self.assertEqual(status["controller"]["pid"], cluster.controller.pid)

    @inlineCallbacks
    def test_no_web(self):
        """With --no-web there is no page, and the URL an earlier run left is removed."""
        cluster = Cluster(self, n=0, controller_args=("--no-web",))
        cluster.security.mkdir(mode=0o700)
        (cluster.security / WEB_URL_FILE).write_text("http://127.0.0.1:1/?token=old\n")
        cluster.start_controller()
        yield cluster.connect()
        self.assertIsNone(read_url_file(cluster.security))

    def test_ipcluster_prints_the_url(self):
        """ipcluster prints the status page's URL, which answers with its engine."""
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ipkernel.cli.ipcluster", "start", "-n", "1"],
            env=child_env(directory),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.addCleanup(stop_process, proc, 30)
        out, end = b"", time.monotonic() + DEADLINE
        while b"Status page: " not in out or not out.endswith(b"\n"):
            ready, _, _ = select.select([proc.stdout], [], [], max(0, end - time.monotonic()))
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                self.fail(f"no status page URL printed: {out!r}")
            out += chunk
        url = out.decode().split("Status page: ", 1)[1].split()[0]
        self.assertEqual(url, read_url_file(directory / "security"))
        status = json.loads(fetch(without_token(url) + "api/status?" + url.split("?", 1)[1])[1])
        self.assertEqual(len(status["engines"]), 1)


TASKS = 80

LOAD = f"""
from ipkernel import client

def slow(x):
    import time
    time.sleep(0.1)
    return x

def bad():
    raise ValueError("bad input")

tc = client.TaskClient()
tc.barrier([tc.run(client.MapTask(bad))])
tc.barrier([tc.run(client.MapTask(slow, args=(i,))) for i in range({TASKS})])
"""


class BrowserTests(TestCase):
    timeout = 180
    skip = browser_missing()

    def start_browser(self, directory: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium")
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={directory / 'profile'}"):
            options.add_argument(flag)
        service = Service(
            executable_path=shutil.which("chromedriver"),
            log_output=str(directory / "chromedriver.log"),
        )
        driver = webdriver.Chrome(options=options, service=service)
        self.addCleanup(driver.quit)
        return driver

    @inlineCallbacks
    def test_page_in_a_browser(self):
        """In headless Chromium the page shows the engines, its task counts change while
        tasks run, it lists the failure, shows an engine's details on a click, renders
        a screenshot that is not blank, and says 403 without the token."""
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        cluster = Cluster(self, n=2)
        yield cluster.start()
        directory = Path(self.mktemp()).absolute()
        directory.mkdir()
        url = read_url_file(cluster.security)
        driver = self.start_browser(directory)
        wait = WebDriverWait(driver, DEADLINE, poll_frequency=0.05)

        def text(element_id: str) -> str:
            return driver.find_element(By.ID, element_id).text

        driver.get(url)
        wait.until(lambda d: text("connection") == "live")
        cells = driver.find_elements(By.CSS_SELECTOR, "#engines .cell")
        self.assertEqual([c.text for c in cells], ["0", "1"])
        self.assertEqual(text("engine-count"), "2")
        self.assertEqual(text("tasks-succeeded"), "0")

        load = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(LOAD)],
            env=cluster.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(stop_process, load)
        seen: set[int] = set()

        def counted_all(d) -> bool:
            seen.add(int(text("tasks-succeeded")))
            return TASKS in seen

        wait.until(counted_all)
        self.assertEqual(load.wait(DEADLINE), 0, load.stderr.read())
        self.assertTrue(seen - {0, TASKS}, f"no count seen while tasks ran: {sorted(seen)}")
        self.assertEqual(text("tasks-failed"), "1")
        summary = driver.find_element(By.CSS_SELECTOR, "#failures details summary").text
        self.assertIn("task 0", summary)
        self.assertIn("raised an exception", summary)

        cells[1].click()
        wait.until(lambda d: d.find_element(By.ID, "engine-detail").is_displayed())
        pids = {str(e.pid) for e in cluster.engines}
        self.assertIn(text("engine-detail").split("pid ")[1].split()[0], pids)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        self.assertEqual(errors, [])

        shot = directory / "status-page.png"
        self.assertTrue(driver.save_screenshot(str(shot)))
        self.assertGreater(png_colors(shot.read_bytes()), 5)

        driver.get(without_token(url))
        self.assertIn("403", driver.find_element(By.TAG_NAME, "body").text)
