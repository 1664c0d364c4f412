"""The web app in a real browser (issue #7): Debian's Chromium, headless, driven by Playwright.

It loads the page, types "a red cube", runs a short job, waits for the 3D viewer, checks the page's state (status,
progress, preview, enabled downloads, a drawn canvas) and saves a screenshot. No browser is downloaded: Chromium
comes from apt (`apt-get install -y chromium`); a missing one fails this test with that instruction.
Set DISTILLERY_APP_SCREENSHOT=path to keep the screenshot (docs/app.png is made this way).
"""

import io
import os
import shutil
import socket

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = os.environ.get("DISTILLERY_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHORT = {"steps": 4, "resolution": 32, "video_frames": 8, "texture_size": 64, "mesh_resolution": 32,
         "preview_every": 2, "randomize_seed": False, "overrides": "--train.eval-views 2"}
JOB_TIMEOUT_MS = 480_000
# DISTILLERY_APP_STEPS=N (and optionally DISTILLERY_APP_RESOLUTION=R): a longer run, for the docs screenshot
LONG = {k: int(os.environ[e]) for k, e in (("steps", "DISTILLERY_APP_STEPS"),
                                           ("resolution", "DISTILLERY_APP_RESOLUTION")) if os.environ.get(e)}


def _require_browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"Chromium is not installed at {CHROMIUM}; install it with "
                    f"`apt-get update && apt-get install -y chromium` (no Playwright browser download is used)",
                    pytrace=False)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the browser test needs Playwright's Python package: pip install playwright "
                    "(do not run `playwright install`; Debian's Chromium is used)", pytrace=False)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    _require_browser()
    from apps.gradio_app import App
    from apps.jobs import Limits

    form = {**SHORT, **LONG} if LONG else SHORT
    app = App(output_dir=str(tmp_path_factory.mktemp("browser-sessions")), limits=Limits(), devices=["cpu"],
              form_defaults=form, poll_s=0.25)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.launch(port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    app.close()


def test_browser_generates_a_red_cube_and_shows_it_in_3d(app_url, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    shot = tmp_path / "app.png"
    long_run = bool(LONG)
    steps = LONG.get("steps", SHORT["steps"])
    timeout_ms = JOB_TIMEOUT_MS + 3000 * steps if long_run else JOB_TIMEOUT_MS
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            # not "networkidle": the page keeps a heartbeat stream open (it tells the app when the tab closes)
            page.goto(app_url, wait_until="load", timeout=120_000)
            expect(page.locator("#job-status")).to_have_attribute("data-state", "idle", timeout=60_000)
            page.locator("#prompt textarea").fill("a red cube")
            page.get_by_role("button", name="Generate").click()
            status = page.locator("#job-status")
            # the progress bar appears while it runs, then the job ends "done" with its files
            expect(page.locator("#job-progress")).to_be_attached(timeout=JOB_TIMEOUT_MS)
            expect(status).to_have_attribute("data-state", "done", timeout=timeout_ms)
            assert f"step {steps}/{steps}" in status.inner_text() and "it/s" in status.inner_text()
            expect(page.locator("#preview img")).to_be_visible()
            expect(page.locator("#dl-glb")).to_be_enabled()
            expect(page.locator("#dl-obj_zip")).to_be_enabled()
            expect(page.locator("#dl-textures_zip")).to_be_enabled()
            expect(page.locator("#dl-ply")).to_be_disabled()  # NeRF runs have no Gaussians
            canvas = page.locator("#model3d canvas")
            expect(canvas).to_be_visible(timeout=60_000)
            page.wait_for_timeout(4000)  # let Babylon.js load the GLB and draw a few frames
            box = canvas.bounding_box()
            assert box and box["width"] > 100 and box["height"] > 100
            pixels = Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    # the viewer drew an object: a good share of the canvas differs from its clear colour (the corner pixel)
    data = list(pixels.getdata())
    clear = data[0]
    drawn = sum(1 for px in data if sum(abs(a - b) for a, b in zip(px, clear)) > 60)
    assert drawn > 0.01 * len(data), f"the 3D viewer shows no object ({drawn} of {len(data)} pixels drawn)"
    if long_run:  # enough steps for the colour to form: the object is clearly red
        reddish = sum(1 for r, g, b in data if r > 120 and r > g + 40 and r > b + 40)
        assert reddish > 0.2 * drawn, f"the object is not red ({reddish} red of {drawn} drawn pixels)"
    assert shot.stat().st_size > 10_000
    if os.environ.get("DISTILLERY_APP_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["DISTILLERY_APP_SCREENSHOT"])
