"""The web page in a real browser: headless Chromium loads the index page, submits a picture
URL with the form, goes back and uploads a picture, and each verdict is read from the
rendered page.

The model (`RednessModel`, browser_support.py) calls red pictures cats and blue ones not, with
probabilities known in advance; every verdict the page shows is checked against that and
against the API's JSON answer for the same picture. Each page must name the model that
answered (run id, test accuracy, and the stage: production at /, staging at /staging, where
`ModelStore.publish` puts the model too), and the browser's console must stay free of errors
(a CSP violation, a script error or a failed load would show there).
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlencode

import pytest
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from tests.api.api_support import BLUE, RED, Api, PictureServer, picture
from tests.browser.browser_support import RednessModel

pytestmark = pytest.mark.timeout(120)

WAIT_SECONDS = 20
URL_FORM = 'form[method="get"]'  # the form that GETs image?image=URL
UPLOAD_FORM = "form#upload"
STAGES = [
    pytest.param("/", "production", id="production"),
    pytest.param("/staging", "staging", id="staging"),
]


@dataclass(frozen=True)
class RenderedVerdict:
    label: str
    probability: str  # as shown: three decimals
    source: str
    model_line: str


def wait_for(driver: Chrome, css: str) -> WebElement:
    return WebDriverWait(driver, WAIT_SECONDS).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, css)), f"no {css!r} on the page"
    )


def rendered_verdict(driver: Chrome) -> RenderedVerdict:
    """Waits for the verdict page and reads it from the DOM. (Should the upload script
    alert() an error instead, Selenium raises UnexpectedAlertPresentException with its text.)"""
    label = wait_for(driver, "p.verdict").text.strip()
    shown = driver.find_element(
        By.XPATH, "//p[starts-with(normalize-space(.), 'probability of cat:')]"
    ).text
    meta = driver.find_element(By.CSS_SELECTOR, "p.meta").text.splitlines()
    assert len(meta) == 2, meta  # the source, then the model line
    return RenderedVerdict(
        label=label,
        probability=shown.split(":", 1)[1].strip(),
        source=meta[0].strip(),
        model_line=meta[1].strip(),
    )


def index_model_line(driver: Chrome) -> str:
    return driver.find_element(By.CSS_SELECTOR, "p.meta").text.strip()


def console_errors(driver: Chrome) -> list[dict]:
    """The console's errors since the last call (CSP violations, script errors, failed loads)."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def assert_names_model(line: str, model: RednessModel, stage: str) -> None:
    """The line reads "Model RUN_ID (STAGE), trained WHEN, test accuracy 80%."."""
    assert line.startswith(f"Model {model.run_id}"), line
    assert "test accuracy 80%" in line, line
    assert f"({stage})" in line, f"the model line does not name the stage {stage}: {line!r}"


def image_path(home: str) -> str:
    return home.rstrip("/") + "/image"


def api_answer_for_url(api: Api, home: str, url: str) -> dict:
    status, body = api.get(image_path(home) + "?" + urlencode({"image": url}))
    assert status == 200, body
    return json.loads(body)


def api_answer_for_upload(api: Api, home: str, body: bytes) -> dict:
    request = urllib.request.Request(
        api.base + image_path(home),
        data=body,
        method="POST",
        headers={"Content-Type": "image/png"},
    )
    status, answer = api.request(request)
    assert status == 200, answer
    return json.loads(answer)


@pytest.mark.parametrize(("home", "stage"), STAGES)
def test_index_page_shows_the_form_and_the_model(
    browser: Chrome, api: Api, model: RednessModel, home: str, stage: str
) -> None:
    console_errors(browser)  # start from an empty log
    browser.get(api.base + home)
    url_field = wait_for(browser, f'{URL_FORM} input[name="image"]')
    assert url_field.get_attribute("type") == "url"
    assert url_field.get_attribute("required") is not None
    assert browser.find_element(By.CSS_SELECTOR, f"{URL_FORM} button[type=submit]").is_displayed()
    file_field = browser.find_element(By.CSS_SELECTOR, f"{UPLOAD_FORM} input#file")
    assert file_field.get_attribute("type") == "file"
    assert browser.find_element(
        By.CSS_SELECTOR, f"{UPLOAD_FORM} button[type=submit]"
    ).is_displayed()
    assert_names_model(index_model_line(browser), model, stage)
    assert console_errors(browser) == []


@pytest.mark.parametrize(("home", "stage"), STAGES)
def test_url_then_upload_show_the_verdict(
    browser: Chrome,
    api: Api,
    model: RednessModel,
    pictures: PictureServer,
    tmp_path_factory: pytest.TempPathFactory,
    home: str,
    stage: str,
) -> None:
    console_errors(browser)
    browser.get(api.base + home)

    # A URL typed into the form: the browser GETs image?image=URL and renders the verdict.
    red_url = pictures.url("/gen/red.png")
    wait_for(browser, f'{URL_FORM} input[name="image"]').send_keys(red_url)
    browser.find_element(By.CSS_SELECTOR, f"{URL_FORM} button[type=submit]").click()
    shown = rendered_verdict(browser)
    answer = api_answer_for_url(api, home, red_url)
    assert answer["probability"] == pytest.approx(RednessModel.probability(RED), abs=1e-3)
    assert (shown.label, shown.probability) == (answer["label"], f"{answer['probability']:.3f}")
    assert shown.label == "cat"
    assert shown.source == red_url
    assert_names_model(shown.model_line, model, stage)
    assert answer["model"]["run_id"] == model.run_id

    # Back to the form; a file chosen in the upload form: the page's script POSTs it and
    # writes the verdict page it gets back into the document.
    browser.back()
    file_field = wait_for(browser, f"{UPLOAD_FORM} input#file")
    blue = picture(BLUE)
    blue_path = tmp_path_factory.mktemp("upload") / "blue.png"
    blue_path.write_bytes(blue)
    file_field.send_keys(str(blue_path))
    browser.find_element(By.CSS_SELECTOR, f"{UPLOAD_FORM} button[type=submit]").click()
    shown = rendered_verdict(browser)
    answer = api_answer_for_upload(api, home, blue)
    assert answer["probability"] == pytest.approx(RednessModel.probability(BLUE), abs=1e-3)
    assert (shown.label, shown.probability) == (answer["label"], f"{answer['probability']:.3f}")
    assert shown.label == "non-cat"
    assert shown.source == "upload"
    assert_names_model(shown.model_line, model, stage)
    thumbnail = browser.find_element(By.CSS_SELECTOR, "img").get_attribute("src") or ""
    assert thumbnail.startswith("data:image/jpeg;base64,")

    # "Ask again" leads back to the same stage's form.
    browser.find_element(By.LINK_TEXT, "Ask again").click()
    wait_for(browser, f"{UPLOAD_FORM} input#file")
    assert_names_model(index_model_line(browser), model, stage)

    assert console_errors(browser) == []
