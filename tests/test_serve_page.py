"""The results page at `/`, driven in headless Chromium (Debian's chromium + chromedriver, through Selenium).

`make test` installs chromium and chromedriver where they are missing (as root with apt-get); elsewhere the
browser tests skip and say what is missing. The static checks of the page run everywhere.
"""

from __future__ import annotations

import re
import shutil
from importlib import resources

import pytest
from serve_support import live_server

WAIT_S = 60
K = 5


def test_page_references_no_external_assets():
    page = resources.files("medhash.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    # The server may run offline: no CDN fonts, scripts or styles; every reference is same-origin.
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", page), "page references an external URL"
    assert not re.search(r"(?i)<(script|link)[^>]+(src|href)=", page), "page loads a separate asset"
    for stable_id in ("file", "k", "search", "query-overlay", "results", "message", "token", "overlay-toggle",
                      "filter-labels", "filter-labels-mode", "filter-sex", "filter-view", "filter-age-min",
                      "filter-age-max", "filter-not-patient", "filter-patient-id", "filter-extra", "viewer",
                      "viewer-canvas", "viewer-window", "viewer-level", "saliency-legend", "query-archived"):
        assert f'id="{stable_id}"' in page


# --- headless Chromium ----------------------------------------------------------------------------

def _missing_browser_parts() -> list[str]:
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the Python package selenium (pip install -e '.[dev]')")
    return missing


@pytest.fixture(scope="module")
def browser():
    missing = _missing_browser_parts()
    if missing:
        pytest.skip(f"browser test needs {', '.join(missing)}; `make test` installs chromium and chromium-driver "
                    "(apt-get, as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,1100", "--hide-scrollbars", "--disable-extensions"):
        options.add_argument(flag)
    # An explicit chromedriver path: selenium-manager must never try to download one (the machine may be offline).
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def open_server(served_archive):
    with live_server(served_archive) as url:
        yield url


def _wait(driver, condition, what: str):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(condition)
    except TimeoutException:
        message = driver.execute_script("return document.getElementById('message').textContent")
        raise AssertionError(f"page never showed {what} within {WAIT_S} s; message area: {message!r}") from None


# Every card's image is a blob (fetched with the token header), decoded, of the asked variant.
HITS_LOADED = """
const [k, variant] = arguments;
const cards = [...document.querySelectorAll('#results .hit')];
if (cards.length < k) return false;
const imgs = cards.map((c) => c.querySelector('img'));
return imgs.every((i) => i && i.dataset.loaded === 'true' && i.dataset.variant === variant
                         && i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0);
"""

QUERY_LOADED = """
const img = document.getElementById('query-overlay');
return img.dataset.loaded === 'true' && img.complete && img.naturalWidth > 0;
"""


def _search(driver, image_path, k: int = K) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.find_element(By.ID, "file").send_keys(str(image_path))
    Select(driver.find_element(By.ID, "k")).select_by_visible_text(str(k))
    driver.find_element(By.ID, "search").click()


def _wait_for_results(driver, variant: str = "overlay", k: int = K) -> None:
    _wait(driver, lambda d: d.execute_script(HITS_LOADED, k, variant), f"{k} hit cards with loaded {variant}s")
    _wait(driver, lambda d: d.execute_script(QUERY_LOADED), "the query's overlay")


@pytest.mark.browser
def test_upload_shows_query_overlay_and_hit_grid(browser, open_server, served_archive, tmp_path):
    from selenium.webdriver.common.by import By

    browser.get(open_server + "/")
    _wait(browser, lambda d: "48 images" in d.find_element(By.ID, "info").text, "the index facts in the header")
    _search(browser, served_archive.image_paths[0])
    _wait_for_results(browser)

    cards = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    assert len(cards) == K
    assert [int(c.get_attribute("data-rank")) for c in cards] == list(range(1, K + 1))
    distances = [int(c.find_element(By.CLASS_NAME, "distance").text.split()[-1]) for c in cards]
    assert distances == sorted(distances) and all(0 <= d <= 32 for d in distances)
    known_ids = {p.stem for p in served_archive.image_paths}
    assert {c.get_attribute("data-image-id") for c in cards} <= known_ids
    assert all(c.find_elements(By.CSS_SELECTOR, ".chips li") for c in cards), "every hit shows its labels"
    assert browser.find_element(By.ID, "query-code").text
    assert "total" in browser.find_element(By.ID, "query-timings").text
    assert not browser.find_element(By.ID, "message").is_displayed()

    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot))
    _assert_real_screenshot(screenshot)

    # The toggle swaps every card to the plain thumbnail, fetched as its own blob.
    overlay_srcs = [c.find_element(By.TAG_NAME, "img").get_attribute("src") for c in cards]
    browser.find_element(By.ID, "overlay-toggle").click()
    _wait_for_results(browser, variant="thumbnail")
    plain_srcs = [c.find_element(By.TAG_NAME, "img").get_attribute("src") for c in cards]
    assert not set(plain_srcs) & set(overlay_srcs)
    browser.find_element(By.ID, "overlay-toggle").click()
    _wait_for_results(browser, variant="overlay")


@pytest.mark.browser
def test_undecodable_upload_shows_the_servers_reason(browser, open_server, tmp_path):
    from selenium.webdriver.common.by import By

    bad = tmp_path / "not-a-radiograph.png"
    bad.write_bytes(b"this is text, not a PNG")
    browser.get(open_server + "/")
    _search(browser, bad)
    message = _wait(browser, lambda d: d.find_element(By.ID, "message").is_displayed()
                    and d.find_element(By.ID, "message"), "an error message")
    assert message.text.startswith("400")
    assert "not-a-radiograph.png" in message.text
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .hit")


@pytest.mark.browser
def test_token_prompt_after_401_then_search_works(browser, served_archive):
    from selenium.webdriver.common.by import By

    with live_server(served_archive, token="s3cret-token-0123456789") as url:
        browser.get(url + "/")
        auth = browser.find_element(By.ID, "auth")
        _wait(browser, lambda d: auth.is_displayed(), "the token prompt after /v1/info answered 401")
        assert "needs an access token" in browser.find_element(By.ID, "message").text

        _search(browser, served_archive.image_paths[1])
        browser.find_element(By.ID, "token").send_keys("wrong-token")
        browser.find_element(By.ID, "token-use").click()
        _wait(browser, lambda d: auth.is_displayed() and "rejected" in d.find_element(By.ID, "message").text,
              "the prompt again after a wrong token")

        browser.find_element(By.ID, "token").send_keys("s3cret-token-0123456789")
        browser.find_element(By.ID, "token-use").click()  # retries the interrupted search
        _wait_for_results(browser)
        assert not auth.is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('medhash.token')") == "s3cret-token-0123456789"
        _wait(browser, lambda d: "48 images" in d.find_element(By.ID, "info").text, "the index facts with the token")


@pytest.mark.browser
def test_filter_controls_query_mark_and_enlarged_view(browser, open_server, served_archive, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(open_server + "/")
    _wait(browser, lambda d: "48 images" in d.find_element(By.ID, "info").text, "the index facts in the header")
    query = served_archive.image_paths[0]  # its file name is an archived id: the page marks it

    # Unfiltered: the query's own image is in the archive, marked, and its facts are shown.
    _search(browser, query)
    _wait_for_results(browser)
    marked = browser.find_elements(By.CSS_SELECTOR, "#results .hit.is-query")
    assert len(marked) == 1 and marked[0].get_attribute("data-image-id") == query.stem
    assert "query image" in marked[0].text
    assert query.stem in browser.find_element(By.ID, "query-archived").text
    assert browser.find_elements(By.ID, "saliency-legend")[0].is_displayed()

    # The overlay toggle swaps the query's picture too.
    overlay_src = browser.find_element(By.ID, "query-overlay").get_attribute("src")
    browser.find_element(By.ID, "overlay-toggle").click()
    _wait(browser, lambda d: d.execute_script(QUERY_LOADED) and d.find_element(By.ID, "query-overlay")
          .get_attribute("data-variant") == "thumbnail", "the query without its overlay")
    assert browser.find_element(By.ID, "query-overlay").get_attribute("src") != overlay_src
    browser.find_element(By.ID, "overlay-toggle").click()

    # Filter controls: women aged 30+, leaving out the query's patient.
    Select(browser.find_element(By.ID, "filter-sex")).select_by_visible_text("F")
    browser.find_element(By.ID, "filter-age-min").send_keys("30")
    browser.find_element(By.ID, "filter-not-patient").click()
    browser.find_element(By.ID, "search").click()
    _wait(browser, lambda d: "filter" in d.find_element(By.ID, "hits-summary").text, "the filtered summary")
    _wait_for_results(browser)
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    for card in cards:
        sex, age, view = card.find_element(By.CLASS_NAME, "facts").text.split(" · ")
        assert sex == "F" and int(age.split()[0]) >= 30 and view in ("PA", "AP")
    partner = served_archive.image_paths[1].stem  # images 0 and 1 share a patient
    ids = {c.get_attribute("data-image-id") for c in cards}
    assert query.stem not in ids and partner not in ids
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .hit.is-query")
    assert "scan_selected" in browser.find_element(By.ID, "hits-summary").text

    # Click a hit: the enlarged view opens, and window/level changes the drawn pixels.
    cards[0].click()
    canvas = _wait(browser, lambda d: d.find_element(By.ID, "viewer").get_attribute("open") is not None
                   and d.find_element(By.ID, "viewer-canvas").get_attribute("data-loaded") == "true"
                   and d.find_element(By.ID, "viewer-canvas"), "the enlarged case")
    assert int(canvas.get_attribute("width")) >= 64  # the archived image at up to 1024 px (phantoms are 64)
    checksum = "const c = document.getElementById('viewer-canvas'); const d = c.getContext('2d')" \
               ".getImageData(0, 0, c.width, c.height).data; let s = 0; for (let i = 0; i < d.length; i += 4) s += d[i]; return s;"
    before = browser.execute_script(checksum)
    browser.execute_script("const w = document.getElementById('viewer-window'); w.value = 60;"
                           "w.dispatchEvent(new Event('input'));")
    assert canvas.get_attribute("data-window") == "60"
    assert browser.execute_script(checksum) != before
    browser.find_element(By.ID, "viewer-close").click()
    _wait(browser, lambda d: d.find_element(By.ID, "viewer").get_attribute("open") is None, "the viewer closed")

    # A bad clause in the free field: the server's 422 names it.
    browser.find_element(By.ID, "filter-extra").send_keys("age=x..")
    browser.find_element(By.ID, "search").click()
    message = _wait(browser, lambda d: d.find_element(By.ID, "message").is_displayed()
                    and d.find_element(By.ID, "message"), "the filter error")
    assert message.text.startswith("422") and "age" in message.text
    assert browser.save_screenshot(str(tmp_path / "filtered.png"))


def _assert_real_screenshot(path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as picture:
        assert picture.width >= 800 and picture.height >= 600
        # A blank or error page has a handful of colours; overlays and text give thousands.
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 500
