"""A real browser on the rating page: headless Chromium (Debian's chromium + chromium-driver) via selenium.

Two raters each rate two items with the keyboard only, the page is reloaded (it resumes), and the export
holds exactly those ratings. Skipped, with the reason, where the browser, its driver or selenium is missing
(.ci/run installs them). With VLM_TUNE_RATE_SCREENSHOTS=DIR it also saves rating-page.png and
rating-status.png there (docs/ holds the ones shown in docs/rating.md).
"""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from rate_helpers import write_tasks
from vlm_tune.rate.command import main

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 20
SCREENSHOTS = os.environ.get("VLM_TUNE_RATE_SCREENSHOTS")
CAPTIONS = [
    ["A red fox sleeping in the snow under a pine tree.", "A dog lying on a white blanket.",
     "<script>alert('x')</script> a fox & <b>snow</b>"],
    ["Two sailboats on a calm lake at sunset, hills behind.", "A boat.", "Boats <i>racing</i> in a storm & big waves."],
    ["A bowl of ramen with an egg, green onions and nori.", "Noodle soup in a blue bowl, chopsticks on the left.",
     "A plate of <b>spaghetti</b> <img src=x onerror=alert(1)>"],
]


def _missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} missing (apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=_missing() or "")


def picture(path: Path, k: int) -> None:
    """A small drawing per item, so the page (and its screenshot) shows a real image."""
    image = Image.new("RGB", (480, 320), [(214, 228, 240), (250, 214, 165), (235, 235, 220)][k])
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 220, 480, 320], fill=[(245, 245, 250), (70, 110, 160), (190, 160, 120)][k])
    draw.ellipse([170, 120, 330, 250], fill=[(200, 90, 40), (240, 240, 240), (230, 200, 120)][k])
    draw.polygon([(60, 220), (100, 80), (140, 220)], fill=(40, 110, 60))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,860"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


# --- page helpers ---


def wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d))


def visible(driver, element_id: str) -> bool:
    return driver.find_element("id", element_id).is_displayed()


def keys(driver, *sequence) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*sequence).perform()


def log_in(driver, name: str) -> None:
    from selenium.webdriver.common.keys import Keys

    wait(driver, lambda d: visible(d, "login"))
    field = driver.find_element("id", "name")
    field.clear()
    field.send_keys(name, Keys.ENTER)
    wait(driver, lambda d: visible(d, "rate") and d.find_element("id", "who").text == name)


def shown_item(driver) -> tuple[str, list[str]]:
    """(prompt, candidate texts in the order shown), once the image has loaded."""
    wait(driver, lambda d: d.execute_script("const i = document.getElementById('image'); return i.complete && i.naturalWidth > 0"))
    texts = [li.find_element("css selector", ".text").get_attribute("textContent")
             for li in driver.find_elements("css selector", "#candidates .candidate")]
    return driver.find_element("id", "prompt").text, texts


def rate_with_keyboard(driver, presses: list, scores_in_order: list[int], expect_done: int) -> dict:
    """Press keys on the current item (ending with Enter); returns {(prompt, text): score} it should record."""
    from selenium.webdriver.common.keys import Keys

    prompt, texts = shown_item(driver)
    keys(driver, *presses, Keys.ENTER)
    wait(driver, lambda d: d.find_element("id", "progress").text.startswith(f"{expect_done} / 3"))
    return {(prompt, text): score for text, score in zip(texts, scores_in_order)}


def test_two_raters_rate_with_the_keyboard_and_the_export_holds_exactly_that(tmp_path, browser, start_server):
    from selenium.webdriver.common.keys import Keys

    for k in range(3):
        picture(tmp_path / "img" / f"{k}.png", k)
    tasks = write_tasks(tmp_path / "tasks.jsonl", [
        {"image": f"img/{k}.png", "prompt": f"Describe image {k + 1} in one sentence.", "responses": CAPTIONS[k],
         "group": "secret-run-name"} for k in range(3)])
    server = start_server(tasks, tmp_path / "team.db")
    url = f"http://127.0.0.1:{server.port}/"
    browser.get(url)
    log_in(browser, "ann")
    prompt, texts = shown_item(browser)
    k = int(prompt.split()[2]) - 1  # "Describe image K in one sentence."
    assert sorted(texts) == sorted(CAPTIONS[k])  # markup shown as the characters it is made of
    assert browser.find_elements("css selector", "#candidates .text *") == []  # no element came out of a text
    assert "secret-run-name" not in browser.page_source
    expected = {}
    # item 1: 4, 2, 5 (focus moves on after each score)
    expected.update({("ann",) + key: s for key, s in rate_with_keyboard(browser, ["4", "2", "5"], [4, 2, 5], 1).items()})
    # item 2: arrows and Tab: down twice, 5; up twice, 1; the focus then jumps to the open one: 3; Right adjusts to 4
    presses = [Keys.ARROW_DOWN, Keys.TAB, "5", Keys.ARROW_UP, Keys.ARROW_UP, "1", "3", Keys.ARROW_RIGHT]
    expected.update({("ann",) + key: s for key, s in rate_with_keyboard(browser, presses, [1, 4, 5], 2).items()})

    browser.refresh()  # resumes as ann at the third item
    wait(browser, lambda d: visible(d, "rate") and d.find_element("id", "progress").text.startswith("2 / 3"))
    assert browser.find_element("id", "who").text == "ann"
    browser.find_element("id", "switch").click()
    log_in(browser, "bob")
    expected.update({("bob",) + key: s for key, s in rate_with_keyboard(browser, ["1", "1", "2"], [1, 1, 2], 1).items()})
    expected.update({("bob",) + key: s for key, s in rate_with_keyboard(browser, ["5", "3", "3"], [5, 3, 3], 2).items()})
    keys(browser, "b")  # back: the last item, with bob's scores
    wait(browser, lambda d: len(d.find_elements("css selector", "button.score.chosen")) == 3)
    assert sorted(int(b.text) for b in browser.find_elements("css selector", "button.score.chosen")) == [3, 3, 5]
    browser.refresh()
    wait(browser, lambda d: visible(d, "rate") and d.find_element("id", "progress").text.startswith("2 / 3"))

    output = tmp_path / "ratings.csv"
    assert main(["export", "--db", str(tmp_path / "team.db"), "--output", str(output)]) == 0
    rows = list(csv.DictReader(output.open(encoding="utf-8")))
    got = {(row["rater"], row["prompt"], row["response"]): int(row["score"]) for row in rows}
    assert len(rows) == 12 and got == expected
    if SCREENSHOTS:
        take_screenshots(browser, server, url, Path(SCREENSHOTS))


def take_screenshots(browser, server, url: str, folder: Path) -> None:
    """The docs' screenshots: the rating page mid-item, and the status page after two more raters."""
    folder.mkdir(parents=True, exist_ok=True)
    keys(browser, "4", "2")
    browser.save_screenshot(str(folder / "rating-page.png"))
    quality = {text: 5 - 2 * k for captions in CAPTIONS for k, text in enumerate(captions)}  # first caption best
    for rater, lenient in (("cy", 0), ("dee", 1)):
        while True:
            item = server.get(f"/api/next?rater={rater}")[1]
            if item.get("done"):
                break
            scores = {r["response_id"]: min(5, quality[r["text"]] + lenient) for r in item["responses"]}
            assert server.post("/api/ratings", {"rater": rater, "item_id": item["item_id"], "scores": scores})[0] == 200
    browser.get(url + "status")
    wait(browser, lambda d: visible(d, "status") and d.find_element("id", "alpha-raw").text not in ("", "–"))
    browser.save_screenshot(str(folder / "rating-status.png"))
