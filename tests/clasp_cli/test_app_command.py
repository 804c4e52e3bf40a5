"""`clasp app` in a real browser: headless Chromium (Debian's) driven by Selenium.

The index is an "oracle": each clip's vector is the text embedding of its transcript, as a
perfectly trained CLASP would store it. So a typed query has one right answer, which must be
listed first, and two different queries must each find their own file (a page that ignored the
query, or showed rows in the wrong order, fails).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import soundfile

from tiny import REPO, oracle_index, save_tiny_clasp, tone

pytest.importorskip("gradio")
pytest.importorskip("selenium")
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver (apt)"),
]
SCREENSHOTS = REPO / "artifacts" / "test-screenshots"
TRANSCRIPTS = ["the red car", "le chat est sur la", "der hund ist", "el perro", "a blue house"]
LANGUAGES = ["en", "fr", "de", "es", "en"]


def indexed_clips(root):
    """A tiny model and an oracle index in which clip i's vector is the text embedding of TRANSCRIPTS[i]."""
    model_dir = save_tiny_clasp(root / "model")
    clips = []
    for i in range(len(TRANSCRIPTS)):
        clips.append(root / f"clip{i}.wav")
        soundfile.write(clips[-1], tone(1 + 0.5 * i, freq=150 + 50 * i, seed=i), 16000)
    return oracle_index(root / "index", model_dir, clips, TRANSCRIPTS, LANGUAGES), clips


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url, server, log, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"clasp app exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"clasp app did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def app_url(tmp_path):
    index, clips = indexed_clips(tmp_path)
    port, log = free_port(), tmp_path / "app.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as out:
        server = subprocess.Popen([sys.executable, "-m", "clasp_cli.main", "app", "--index", str(index), "--port", str(port)],
                                  cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_until_serving(url, server, log)
        yield url, clips
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--window-size=1280,1400"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def result_rows(driver):
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#results [role=row]")
    return [row.text.split("\n") for row in rows[1:]]  # rows[0] is the header


def search_for(driver, query, expected_file):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.CSS_SELECTOR, "#query textarea")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(query)
    driver.find_element(By.CSS_SELECTOR, "#search-button").click()
    # Wait for this query's results (the previous query's rows may still be on the page).
    WebDriverWait(driver, 60).until(lambda d: (rows := result_rows(d)) and rows[0][2:3] == [expected_file])
    return result_rows(driver)


def test_search_page_lists_the_right_file_first_and_plays_it(app_url, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, clips = app_url
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#query textarea"))

    rows = search_for(browser, "el perro", "clip3.wav")
    assert rows[0] == ["1", "1", "clip3.wav", "el perro", "es", "2.5"]  # score 1.0 shows as "1"
    assert len(rows) == len(TRANSCRIPTS) and float(rows[1][1]) < 1.0
    rows = search_for(browser, "DER Hund ist", "clip2.wav")
    assert rows[0][3:5] == ["der hund ist", "de"]
    assert [int(row[0]) for row in rows] == [1, 2, 3, 4, 5]

    player = browser.find_element(By.CSS_SELECTOR, "#player-0")
    assert player.is_displayed() and "1. clip2.wav" in player.text
    (link,) = player.find_elements(By.CSS_SELECTOR, "a[href*='clip2.wav']")
    with urllib.request.urlopen(link.get_attribute("href"), timeout=10) as response:  # the page serves the real file
        assert response.read() == clips[2].read_bytes()
    browser.save_screenshot(str(SCREENSHOTS / "app-search.png"))

    # Zero-shot classification: upload a clip, give labels, get one score per label.
    next(tab for tab in browser.find_elements(By.CSS_SELECTOR, "[role=tab]") if "Zero-shot" in tab.text).click()
    WebDriverWait(browser, 20).until(lambda d: d.find_element(By.CSS_SELECTOR, "#labels textarea").is_displayed())
    browser.find_element(By.CSS_SELECTOR, "#clip input[type=file]").send_keys(str(clips[0]))
    browser.find_element(By.CSS_SELECTOR, "#labels textarea").send_keys("red car, blue house, el perro")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#clip audio, #clip [data-testid=waveform-controls]"))
    browser.find_element(By.CSS_SELECTOR, "#classify-button").click()
    WebDriverWait(browser, 60).until(lambda d: "%" in d.find_element(By.CSS_SELECTOR, "#scores").text)
    scores = browser.find_element(By.CSS_SELECTOR, "#scores").text
    percentages = [int(line.rstrip("%")) for line in scores.split("\n") if line.endswith("%")]
    assert all(label in scores for label in ("red car", "blue house", "el perro"))
    assert len(percentages) == 3 and abs(sum(percentages) - 100) <= 2
    browser.save_screenshot(str(SCREENSHOTS / "app-classify.png"))
