"""The web page in a real browser (Debian's Chromium driven by Playwright), on a real server."""

import base64
import csv
import io
import itertools
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import requests
from PIL import Image
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    Route,
    expect,
    sync_playwright,
)

from tests.conftest import DATA_DIR, ROOT
from tests.live import LiveServer, free_port, start_server, stop_server

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
"""Headless, as root, and quiet: the machine has no network, so background fetches are off."""

ARTIFACTS = ROOT / "artifacts"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}

Stroke = Sequence[tuple[float, float]]
"""Points in pad units: (0, 0) is the pad's top-left corner, (1, 1) its bottom-right."""

ONE: list[Stroke] = [[(0.40, 0.20), (0.52, 0.08), (0.52, 0.92)]]
SEVEN: list[Stroke] = [[(0.30, 0.10), (0.72, 0.10), (0.45, 0.92)]]
FOUR: list[Stroke] = [
    [(0.57, 0.08), (0.28, 0.63), (0.74, 0.63)],
    [(0.59, 0.34), (0.59, 0.92)],
]
"""Digits drawn inside the guide box, as the page asks; the plain pipeline reads these right."""

expect.set_options(timeout=20_000)


BODY_LIMIT = 1024 * 1024
"""The server's body limit here: far above any drawing or example, small enough to exceed fast."""


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """One real server for the module."""
    server = start_server("--no-access-log", env={"DIGITSERVE_MAX_BODY_BYTES": str(BODY_LIMIT)})
    yield server
    assert stop_server(server) == 0


def start_bundled() -> LiveServer:
    """`digitserve serve` with no --model: the bundled repository, digits and digits-robust.

    `start_server` always passes --model, which overrides the repository.
    """
    port = free_port()
    command = [sys.executable, "-m", "digitserve", "serve", "--port", str(port), "--no-access-log"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    server = LiveServer(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except requests.RequestException:
            time.sleep(0.1)
    stop_server(server)
    raise RuntimeError("the bundled repository's server did not become ready in 60 s")


@pytest.fixture(scope="module")
def bundled() -> Iterator[LiveServer]:
    """One real server of the bundled repository (two models) for the module."""
    server = start_bundled()
    yield server
    assert stop_server(server) == 0


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    """The Playwright driver (it ships inside the Python package)."""
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """Debian's Chromium; Playwright's own browser download does not work here."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver")
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@dataclass
class Visit:
    """A page in its own browser context, with every request and page error it made."""

    page: Page
    context: BrowserContext
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)


def open_page(browser: Browser, live: LiveServer, **options: object) -> Visit:
    """Open `/` and wait until the model card has loaded."""
    context = browser.new_context(**options)  # type: ignore[arg-type]
    visit = Visit(context.new_page(), context, live.url)

    def on_request(request: Request) -> None:
        visit.requests.append(request.url)

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            visit.csp_violations.append(message.text)

    visit.page.on("request", on_request)
    visit.page.on("console", on_console)
    visit.page.on("pageerror", lambda error: visit.errors.append(str(error)))
    response = visit.page.goto(f"{live.url}/")
    assert response is not None
    assert response.status == 200
    expect(visit.page.locator("#card-facts")).to_contain_text("digits 1")
    return visit


def close_page(visit: Visit) -> None:
    """Check what every visit must satisfy, then close it."""
    try:
        outside = [url for url in visit.requests if not url.startswith(f"{visit.origin}/")]
        assert outside == [], "the page asked for something outside the service's origin"
        assert visit.errors == [], "uncaught script errors"
        assert visit.csp_violations == [], "the page broke its own Content-Security-Policy"
    finally:
        visit.context.close()


@pytest.fixture
def desktop(browser: Browser, live: LiveServer) -> Iterator[Visit]:
    """The page at a desktop size."""
    visit = open_page(browser, live, viewport=DESKTOP)
    yield visit
    close_page(visit)


@pytest.fixture
def two_models(browser: Browser, bundled: LiveServer) -> Iterator[Visit]:
    """The page at a desktop size, on the server of two models."""
    visit = open_page(browser, bundled, viewport=DESKTOP)
    yield visit
    close_page(visit)


@pytest.fixture
def phone(browser: Browser, live: LiveServer) -> Iterator[Visit]:
    """The page on a phone-sized touch screen."""
    visit = open_page(
        browser, live, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    yield visit
    close_page(visit)


PointerKind = Literal["mouse", "pen", "touch"]


def draw(page: Page, strokes: Sequence[Stroke], kind: PointerKind = "mouse") -> None:
    """Draw strokes on the pad with trusted input events of the given pointer kind."""
    page.locator("#sketch").scroll_into_view_if_needed()
    box = page.locator("#sketch").bounding_box()
    assert box is not None
    cdp = page.context.new_cdp_session(page)

    def at(x: float, y: float) -> dict[str, float]:
        return {"x": box["x"] + x * box["width"], "y": box["y"] + y * box["height"]}

    for stroke in strokes:
        points = [stroke[0]]
        for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
            points += [(x0 + (x1 - x0) * i / 8, y0 + (y1 - y0) * i / 8) for i in range(1, 9)]
        if kind == "mouse":
            for index, point in enumerate(points):
                where = at(*point)
                page.mouse.move(where["x"], where["y"])
                if index == 0:
                    page.mouse.down()
            page.mouse.up()
        elif kind == "pen":
            pen = {"button": "left", "pointerType": "pen", "clickCount": 1}
            cdp.send("Input.dispatchMouseEvent", {"type": "mousePressed", **at(*points[0]), **pen})
            for point in points[1:]:
                cdp.send(
                    "Input.dispatchMouseEvent",
                    {"type": "mouseMoved", "buttons": 1, **at(*point), **pen},
                )
            cdp.send(
                "Input.dispatchMouseEvent", {"type": "mouseReleased", **at(*points[-1]), **pen}
            )
        else:
            cdp.send(
                "Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [at(*points[0])]}
            )
            for point in points[1:]:
                cdp.send(
                    "Input.dispatchTouchEvent", {"type": "touchMove", "touchPoints": [at(*point)]}
                )
            cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def reading(page: Page, panel: str = "#result") -> str:
    """Wait until the answer for the latest input is shown in a reading panel (the first, or
    `#result-b` when comparing), and return the digit read."""
    result = page.locator(panel)
    expect(result).to_have_attribute("data-state", "ready")
    label = result.get_attribute("data-label")
    assert label is not None
    expect(result.locator(".digit")).to_have_text(label)
    return label


def shown_grid(page: Page) -> list[list[int]]:
    """The 8x8 preview, read back from its canvas pixels as levels 0..16."""
    grid: list[list[int]] = page.evaluate(
        """() => {
            const canvas = document.getElementById("grid");
            const data = canvas.getContext("2d").getImageData(0, 0, 8, 8).data;
            const rows = [];
            for (let y = 0; y < 8; y += 1) {
                rows.push([]);
                for (let x = 0; x < 8; x += 1) {
                    rows[y].push(Math.round(((255 - data[(y * 8 + x) * 4]) * 16) / 255));
                }
            }
            return rows;
        }"""
    )
    return grid


def table_grid(page: Page, panel: str = "#result") -> list[list[int]]:
    """The 8x8 grid as a reading panel prints it in numbers."""
    cells = page.locator(f"{panel} .values td").all_text_contents()
    assert len(cells) == 64
    return [[int(value) for value in cells[row * 8 : row * 8 + 8]] for row in range(8)]


def record_predict_types(page: Page) -> list[str]:
    """Collect the Content-Type of every prediction request the page sends from now on."""
    types: list[str] = []

    def on_request(request: Request) -> None:
        if ":predict" in request.url:
            types.append(request.headers.get("content-type", "").split(";")[0])

    page.on("request", on_request)
    return types


def pad_png(page: Page) -> bytes:
    """The drawing pad as a PNG, encoded by the browser as the page encodes what it sends."""
    url: str = page.evaluate('() => document.getElementById("sketch").toDataURL("image/png")')
    header, payload = url.split(",", 1)
    assert header == "data:image/png;base64"
    return base64.b64decode(payload)


def api_pixels(live: LiveServer, png: bytes) -> tuple[int, list[list[int]]]:
    """Ask the service directly what it reads in an image: the label and the 8x8 grid."""
    response = requests.post(
        f"{live.url}/v1/models/digits:predict?include=pixels",
        data=png,
        headers={"Content-Type": "image/png"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    return prediction["label"], prediction["pixels"]


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as a test artefact."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.mark.parametrize(
    ("strokes", "kind", "digit"),
    [(ONE, "mouse", "1"), (SEVEN, "pen", "7"), (FOUR, "mouse", "4")],
    ids=["one-by-mouse", "seven-by-pen", "four-in-two-strokes"],
)
def test_a_drawn_digit_is_read_and_its_grid_shown(
    desktop: Visit, live: LiveServer, strokes: list[Stroke], kind: PointerKind, digit: str
) -> None:
    page = desktop.page
    page.evaluate(
        """() => {
            window.pointerKinds = new Set();
            document.getElementById("sketch").addEventListener(
                "pointerdown", (event) => window.pointerKinds.add(event.pointerType));
        }"""
    )
    sent = record_predict_types(page)
    draw(page, strokes, kind)
    assert reading(page) == digit
    assert page.evaluate("() => [...window.pointerKinds]") == [kind]
    expect(page.locator("#summary")).to_contain_text(f"Reads {digit}")
    expect(page.locator("#scores li")).to_have_count(10)
    expect(page.locator("#scores li.predicted")).to_have_attribute("data-class", digit)
    assert sent, "no drawing was sent"
    assert set(sent) == {"image/png"}
    # Settled, the page shows exactly what the service reads in the drawing on the pad.
    label, pixels = api_pixels(live, pad_png(page))
    assert str(label) == digit
    assert shown_grid(page) == pixels
    assert table_grid(page) == pixels
    assert sum(map(sum, pixels)) > 150, "too little ink to resemble the training digits"
    if digit == "1":
        assert all(row[0] == row[7] == 0 for row in pixels), "a 1 keeps to the middle columns"
    if digit == "7":
        assert sum(pixels[0]) > 3 * sum(pixels[7]), "a 7's bar is at the top"
    if digit == "7":
        screenshot(page, "page-desktop.png")


def test_drawing_with_a_finger_on_a_phone(phone: Visit) -> None:
    page = phone.page
    draw(page, SEVEN, "touch")
    assert reading(page) == "7"
    width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1], "the page scrolls sideways on a phone"
    # The verdict sits right under the pad: visible without scrolling past the drawing.
    verdict = page.locator("#digit").bounding_box()
    assert verdict is not None
    assert verdict["y"] + verdict["height"] <= PHONE["height"]
    screenshot(page, "page-phone.png")


def test_undo_clear_and_the_keyboard_shortcut(desktop: Visit) -> None:
    page = desktop.page
    undo, clear = page.get_by_role("button", name="Undo"), page.get_by_role("button", name="Clear")
    expect(undo).to_be_disabled()
    expect(clear).to_be_disabled()
    draw(page, FOUR)
    assert reading(page) == "4"
    four = shown_grid(page)
    undo.click()
    reading(page)
    assert shown_grid(page) != four, "undo did not take the last stroke away"
    page.keyboard.press("Control+z")
    expect(page.locator("#result")).to_have_attribute("data-state", "idle")
    expect(page.locator("#digit")).to_have_text("?")
    expect(undo).to_be_disabled()
    expect(clear).to_be_disabled()
    assert shown_grid(page) == [[0] * 8] * 8
    draw(page, ONE)
    assert reading(page) == "1"
    clear.click()
    expect(page.locator("#result")).to_have_attribute("data-state", "idle")
    expect(page.locator("#summary")).to_have_text("Draw a digit to start.")
    expect(page.locator("#scores li")).to_have_count(0)
    blank = page.evaluate(
        """() => {
            const pad = document.getElementById("sketch");
            const data = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height).data;
            return data.every((value) => value === 255);
        }"""
    )
    assert blank, "clear left ink on the pad"


def upload(page: Page, name: str, data: bytes, mime: str) -> None:
    """Choose a file with the page's file input, and wait until the page has taken it."""
    page.locator("#file").set_input_files({"name": name, "mimeType": mime, "buffer": data})
    expect(page.locator("#source")).to_contain_text(name)


def test_every_example_image_uploaded_gets_its_label(desktop: Visit) -> None:
    page = desktop.page
    with (DATA_DIR / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) >= 20
    for row in rows:
        upload(page, row["file"], (DATA_DIR / row["file"]).read_bytes(), "image/jpeg")
        assert reading(page) == row["label"], row["file"]
        assert sum(map(sum, shown_grid(page))) > 0


def test_an_image_dropped_on_the_pad_is_read(desktop: Visit) -> None:
    page = desktop.page
    payload = base64.b64encode((DATA_DIR / "3_256px.jpg").read_bytes()).decode()
    transfer = page.evaluate_handle(
        """(payload) => {
            const bytes = Uint8Array.from(atob(payload), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
            return transfer;
        }""",
        payload,
    )
    page.dispatch_event("#pad", "dragover", {"dataTransfer": transfer})
    expect(page.locator("#pad")).to_have_class("pad dragging")
    page.dispatch_event("#pad", "drop", {"dataTransfer": transfer})
    expect(page.locator("#source")).to_contain_text("dropped.jpg")
    assert reading(page) == "3"
    expect(page.locator("#pad")).to_have_class("pad has-picture")


def white_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "mime", "title", "detail"),
    [
        (
            "notes.txt",
            b"just some words, not a picture\n",
            "text/plain",
            "That image could not be read",
            "not a JPEG or PNG image",
        ),
        ("anim.gif", b"GIF89a" + bytes(64), "image/gif", "not accepted", "image/gif images"),
        ("white.png", white_png(), "image/png", "No digit could be found", "no ink"),
        (
            "huge.jpg",
            (DATA_DIR / "9_256px.jpg").read_bytes() + bytes(BODY_LIMIT),
            "image/jpeg",
            "That image is too large",
            f"the limit is {BODY_LIMIT}",
        ),
    ],
    ids=["not-an-image-400", "gif-415", "blank-422", "over-the-body-limit-413"],
)
def test_a_bad_file_shows_a_readable_error(
    desktop: Visit, name: str, data: bytes, mime: str, title: str, detail: str
) -> None:
    page = desktop.page
    upload(page, name, data, mime)
    expect(page.locator("#result")).to_have_attribute("data-state", "error")
    alert = page.get_by_role("alert")
    expect(alert).to_be_visible()
    expect(alert.locator("#error-title")).to_contain_text(title)
    expect(alert.locator("#error-detail")).to_contain_text(detail)
    if name != "huge.jpg":  # refused from Content-Length, before the file is even read
        expect(alert.locator("#error-detail")).to_contain_text(f"{name}: ")
    expect(alert.locator("#error-meta")).to_contain_text("request id")
    expect(page.locator("#digit")).to_have_text("!")
    expect(page.get_by_role("button", name="Clear")).to_be_enabled()
    # Never a blank screen: the pad and its tools are still there, and drawing recovers.
    expect(page.locator("#sketch")).to_be_visible()
    if name == "notes.txt":
        screenshot(page, "page-error.png")
    draw(page, SEVEN)
    assert reading(page) == "7"
    expect(alert).to_be_hidden()


def test_warnings_in_a_prediction_are_shown_in_words(desktop: Visit) -> None:
    # The real answer, with the `warnings` list predictions are getting (input diagnostics)
    # added on its way to the page: the page must show each message, and tolerate its absence.
    page = desktop.page
    warning = {"code": "low_contrast", "message": "The ink is faint against the paper."}

    def add_warning(route: Route) -> None:
        answer = route.fetch()
        body = answer.json()
        body["predictions"][0]["warnings"] = [warning]
        route.fulfill(response=answer, json=body)

    page.route("**/*:predict*", add_warning)
    upload(page, "3_64px.jpg", (DATA_DIR / "3_64px.jpg").read_bytes(), "image/jpeg")
    assert reading(page) == "3"
    warnings = page.get_by_role("list", name="Warnings about the input")
    expect(warnings).to_be_visible()
    expect(warnings.locator("li")).to_have_text([warning["message"]])
    expect(warnings.locator("li")).to_have_attribute("data-code", "low_contrast")
    page.unroute("**/*:predict*")
    upload(page, "5_64px.jpg", (DATA_DIR / "5_64px.jpg").read_bytes(), "image/jpeg")
    assert reading(page) == "5"
    expect(warnings).to_be_hidden()


def test_model_card_panel_links_to_the_api(desktop: Visit, live: LiveServer) -> None:
    page = desktop.page
    card = page.locator(".card")
    expect(card).to_contain_text("Reads a hand-drawn digit")
    expect(card.locator("#card-facts")).to_contain_text("0 1 2 3 4 5 6 7 8 9")
    expect(card.locator("#card-facts")).to_contain_text("98.8% on 899 held-out digits")
    hrefs = card.locator("a").evaluate_all("(links) => links.map((link) => link.href)")
    assert f"{live.url}/docs" in hrefs
    assert f"{live.url}/v1" in hrefs
    assert f"{live.url}/v1/models/digits" in hrefs
    for href in hrefs:
        assert requests.get(href, timeout=10).status_code == 200, href
    index = requests.get(f"{live.url}/v1", timeout=10).json()
    assert f"{live.url}{index['links']['metrics']}" in hrefs


def test_every_control_is_reachable_by_keyboard(desktop: Visit) -> None:
    page = desktop.page
    draw(page, ONE)
    reading(page)
    page.locator("body").focus()
    reached: list[str] = []
    for _ in range(30):
        page.keyboard.press("Tab")
        reached.append(
            page.evaluate(
                """() => {
                    const el = document.activeElement;
                    return `${el.tagName.toLowerCase()}:${el.id || el.textContent.trim()}`;
                }"""
            )
        )
    for control in (
        "a:Skip to the drawing pad",
        "a:API index (JSON)",
        "a:API docs",
        "button:undo",
        "button:clear",
        "button:upload",
        "summary:The grid as numbers (0 = paper, 16 = ink)",
        "a:Interactive API docs",
        "a:Model card (JSON)",
    ):
        assert control in reached, control
    page.get_by_role("button", name="Clear").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#result")).to_have_attribute("data-state", "idle")
    # The focused button went disabled; focus moved on instead of being lost.
    assert page.evaluate("() => document.activeElement.id") == "upload"


CONTRAST = """() => {
    const channel = (c) => {
        c /= 255;
        return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    };
    const rgba = (text) => text.match(/[\\d.]+/g).map(Number);
    const luminance = ([r, g, b]) =>
        0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b);
    const background = (el) => {
        for (let node = el; node; node = node.parentElement) {
            const color = rgba(getComputedStyle(node).backgroundColor);
            if (color.length < 4 || color[3] === 1) return color;
        }
        return [255, 255, 255];
    };
    const failures = [];
    for (const el of document.querySelectorAll("body *")) {
        const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
        if (!own || !el.checkVisibility() || el.closest("[aria-hidden=true]")) continue;
        const style = getComputedStyle(el);
        const [a, b] = [luminance(rgba(style.color)), luminance(background(el))];
        const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
        const size = parseFloat(style.fontSize);
        const large = size >= 24 || (size >= 18.66 && Number(style.fontWeight) >= 700);
        if (ratio < (large ? 3 : 4.5)) failures.push(`${el.tagName}#${el.id}: ${ratio.toFixed(2)}`);
    }
    return failures;
}"""


def test_text_contrast_meets_wcag_aa(desktop: Visit) -> None:
    page = desktop.page
    assert page.evaluate(CONTRAST) == []
    draw(page, SEVEN)
    reading(page)
    page.locator("#result details.values summary").click()
    assert page.evaluate(CONTRAST) == []
    upload(page, "notes.txt", b"not an image", "text/plain")
    expect(page.locator("#result")).to_have_attribute("data-state", "error")
    assert page.evaluate(CONTRAST) == []


def record_predicts(page: Page) -> list[tuple[str, str]]:
    """Collect the path and media type of every prediction request the page sends from now on."""
    sent: list[tuple[str, str]] = []

    def on_request(request: Request) -> None:
        if ":predict" in request.url:
            path = "/" + request.url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
            sent.append((path, request.headers.get("content-type", "").split(";")[0]))

    page.on("request", on_request)
    return sent


def test_one_model_needs_no_picker(desktop: Visit) -> None:
    page = desktop.page
    expect(page.locator("#models")).to_be_hidden()
    expect(page.locator("#result-b")).to_be_hidden()
    expect(page.locator("#result-title")).to_have_text("What the model reads")
    expect(page.locator("#card-title")).to_have_text("About the model")
    expect(page.locator("#card-name")).to_be_hidden()
    draw(page, ONE)
    assert reading(page) == "1"
    expect(page.locator("#answered")).to_have_text("Answered by digits, version 1")


def test_the_picker_offers_every_model_and_preselects_the_default(two_models: Visit) -> None:
    page = two_models.page
    picker = page.get_by_label("Model", exact=True)
    expect(picker).to_be_visible()
    expect(picker.locator("option")).to_have_text(["digits", "digits-robust"])
    expect(picker).to_have_value("digits")
    expect(page.get_by_label("Compare with another model")).not_to_be_checked()
    expect(page.get_by_label("Second model")).to_be_hidden()
    expect(page.locator("#result-b")).to_be_hidden()
    expect(page.locator("#result-title")).to_have_text("What digits reads")
    expect(page.locator("#card-name")).to_have_text("digits")


def test_switching_models_sends_predictions_to_the_chosen_one(two_models: Visit) -> None:
    page = two_models.page
    sent = record_predicts(page)
    draw(page, SEVEN)
    assert reading(page) == "7"
    expect(page.locator("#answered")).to_have_text("Answered by digits, version 1")
    assert {path for path, _ in sent} == {"/v1/models/digits:predict"}
    # By keyboard: the picker is a plain select; the drawing on the pad is read again at once.
    sent.clear()
    page.get_by_label("Model", exact=True).focus()
    page.keyboard.press("ArrowDown")
    expect(page.get_by_label("Model", exact=True)).to_have_value("digits-robust")
    expect(page.locator("#card-facts")).to_contain_text("digits-robust 1")
    expect(page.locator("#card-facts")).to_contain_text("99.4% on 899 held-out digits")
    expect(page.locator("#result-title")).to_have_text("What digits-robust reads")
    expect(page.locator("#answered")).to_have_text("Answered by digits-robust, version 1")
    assert reading(page) == "7"
    assert {path for path, _ in sent} == {"/v1/models/digits-robust:predict"}
    hrefs = page.locator(".card a").evaluate_all("(links) => links.map((link) => link.href)")
    assert f"{two_models.origin}/v1/models/digits-robust" in hrefs
    # An upload is sent again, as the file it was, to the model chosen next.
    upload(page, "3_64px.jpg", (DATA_DIR / "3_64px.jpg").read_bytes(), "image/jpeg")
    assert reading(page) == "3"
    expect(page.locator("#answered")).to_have_text("Answered by digits-robust, version 1")
    sent.clear()
    page.get_by_label("Model", exact=True).select_option("digits")
    expect(page.locator("#answered")).to_have_text("Answered by digits, version 1")
    assert reading(page) == "3"
    assert sent == [("/v1/models/digits:predict", "multipart/form-data")]


def test_compare_shows_two_readings_side_by_side(two_models: Visit) -> None:
    page = two_models.page
    # Only the second model's answers get a warning: each reading shows its own.
    warning = {"code": "low_confidence", "message": "The model is unsure between two digits."}

    def add_warning(route: Route) -> None:
        answer = route.fetch()
        body = answer.json()
        body["predictions"][0]["warnings"] = [warning]
        route.fulfill(response=answer, json=body)

    page.route("**/v1/models/digits-robust:predict*", add_warning)
    sent = record_predicts(page)
    compare = page.get_by_label("Compare with another model")
    compare.focus()
    page.keyboard.press("Space")
    expect(compare).to_be_checked()
    second = page.get_by_label("Second model")
    expect(second).to_be_visible()
    expect(second).to_have_value("digits-robust")
    expect(page.locator("#result-b")).to_be_visible()
    expect(page.locator("#result-b")).to_have_attribute("data-state", "idle")
    expect(page.locator("#card-title")).to_have_text("About the models")
    expect(page.locator("#card-facts-b")).to_contain_text("digits-robust 1")

    draw(page, SEVEN)
    assert reading(page, "#result") == "7"
    assert reading(page, "#result-b") == "7"
    first, other = page.locator("#result"), page.locator("#result-b")
    expect(first.locator(".answered")).to_have_text("Answered by digits, version 1")
    expect(other.locator(".answered")).to_have_text("Answered by digits-robust, version 1")
    expect(first.locator(".summary")).to_contain_text(" sure.")
    expect(other.locator(".summary")).to_contain_text(" sure.")
    expect(first.locator(".warnings")).not_to_contain_text(warning["message"])
    expect(other.locator(".warnings li")).to_have_text([warning["message"]])
    expect(other.get_by_role("list", name="Warnings about the input")).to_be_visible()
    # The same drawing went to both models: both saw the same 8x8 grid.
    assert set(sent) == {
        ("/v1/models/digits:predict", "image/png"),
        ("/v1/models/digits-robust:predict", "image/png"),
    }
    assert table_grid(page) == table_grid(page, "#result-b")
    # Side by side: the second reading is to the right of the first, level with it.
    box, box_b = first.bounding_box(), other.bounding_box()
    assert box is not None
    assert box_b is not None
    assert box_b["x"] >= box["x"] + box["width"]
    assert abs(box_b["y"] - box["y"]) < 1
    assert page.evaluate(CONTRAST) == []
    screenshot(page, "page-compare.png")

    # Turned off, only the first model is asked.
    compare.uncheck()
    expect(page.locator("#result-b")).to_be_hidden()
    expect(second).to_be_hidden()
    page.get_by_role("button", name="Clear").click()
    sent.clear()
    draw(page, ONE)
    assert reading(page) == "1"
    assert {path for path, _ in sent} == {"/v1/models/digits:predict"}


def test_compare_shows_one_models_error_beside_the_others_reading(two_models: Visit) -> None:
    page = two_models.page
    page.get_by_label("Compare with another model").check()
    page.route(
        "**/v1/models/digits-robust:predict*",
        lambda route: route.fulfill(
            status=503,
            content_type="application/problem+json",
            json={"code": "model_not_ready", "detail": "digits-robust/1 is loading"},
        ),
    )
    upload(page, "5_64px.jpg", (DATA_DIR / "5_64px.jpg").read_bytes(), "image/jpeg")
    assert reading(page) == "5"
    other = page.locator("#result-b")
    expect(other).to_have_attribute("data-state", "error")
    expect(other.get_by_role("alert")).to_contain_text("The model is not ready yet")
    expect(other.locator(".problem-detail")).to_have_text("digits-robust/1 is loading")
    expect(other.locator(".answered")).to_be_hidden()


def test_model_controls_are_reachable_by_keyboard(two_models: Visit) -> None:
    page = two_models.page
    page.get_by_label("Compare with another model").check()
    page.get_by_role("link", name="Skip to the drawing pad").focus()
    reached: list[str] = []
    for _ in range(6):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.id"))
    # After the two API links, before the pad's tools (Undo and Clear are off on a blank pad).
    assert reached == ["", "", "model", "compare", "model-b", "upload"]
