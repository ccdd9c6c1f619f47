"""The web UI in a real headless browser (issue 20): Playwright driving Debian's Chromium against the real embedded
models with few steps, and concurrent API requests against a capped queue. Loopback only.

Skipped, with a message, when Playwright or Chromium is missing: ``pip install playwright`` (in the test extra)
and ``apt-get install chromium`` (or set ``MICROCINEMA_CHROMIUM`` to a Chromium/Chrome executable).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the web UI tests need gradio (pip install -e '.[test]')")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="browser tests skipped: pip install playwright (in the test extra)")

from microcinema.core.video_io import read_video  # noqa: E402
from microcinema.ui.app import build_app, offline_theme  # noqa: E402
from microcinema.ui.backend import Studio  # noqa: E402

CHROMIUM = os.environ.get("MICROCINEMA_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="browser tests skipped: no Chromium found; apt-get install chromium (Debian) or set "
                             "MICROCINEMA_CHROMIUM to a Chromium/Chrome executable")
#: Seconds a page may wait for a video (the embedded models with 1 step take a few seconds on 2 cores).
WAIT_MS = 180_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    studio = Studio(outputs=tmp_path_factory.mktemp("ui_browser"))
    demo = build_app(studio, max_queue=1)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                theme=offline_theme())
    yield f"http://127.0.0.1:{port}", studio
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(server[0], wait_until="networkidle")
    yield page
    page.close()


def _fill(page, element_id: str, text: str) -> None:
    page.locator(f"#{element_id} textarea, #{element_id} input").first.fill(text)


def test_generate_shows_key_frame_video_and_seed(page, server, tmp_path):
    _fill(page, "mc-prompt", "a red circle moving left")
    _fill(page, "mc-steps", "1")
    page.locator("#mc-generate").click()
    video = page.locator("#mc-video video")
    video.wait_for(timeout=WAIT_MS)
    assert page.locator("#mc-key img").count() == 1  # the key frame is shown
    src = video.get_attribute("src")
    assert src and src.endswith(".mp4")
    body = page.request.get(src).body()
    (tmp_path / "page.mp4").write_bytes(body)
    frames, _ = read_video(tmp_path / "page.mp4")
    assert frames.shape == (33, 64, 64, 3)
    seed = page.locator("#mc-seed-used textarea, #mc-seed-used input").first.input_value()
    status = page.locator("#mc-status").inner_text()
    assert seed.isdigit() and f"seed {seed}" in status and "microcinema generate" in status
    assert page.locator("#mc-seed input").input_value() == "-1"  # the next click draws a new seed
    files = page.locator("#mc-files").inner_text()
    assert ".mp4" in files and ".gif" in files  # both downloads


def test_past_runs_show_settings_and_seed(page, server):
    runs = server[1].runs.list()
    assert runs, "test_generate_shows_key_frame_video_and_seed made a run"
    page.get_by_role("tab", name="Past runs").click()
    page.locator("#runs-refresh").click()
    thumbnails = page.locator("#runs-gallery button.thumbnail-item")
    thumbnails.first.wait_for(timeout=30_000)
    assert thumbnails.count() == len(runs)
    thumbnails.first.click()
    settings = page.locator("#runs-settings")
    settings.filter(has_text="command").wait_for(timeout=30_000)
    assert str(runs[0].seed) in settings.inner_text()
    page.locator("#runs-video video").wait_for(timeout=30_000)


def test_empty_prompt_shows_a_message(page):
    _fill(page, "mc-prompt", "   ")
    page.locator("#mc-generate").click()
    page.locator("#mc-status", has_text="empty prompt").wait_for(timeout=30_000)
    text = page.locator("#mc-status").inner_text()
    assert "Error: empty prompt" in text and "Traceback" not in page.content()


def test_cancel_stops_an_artv_video(page, server):
    studio = server[1]
    before = len([r for r in studio.runs.list() if r.settings["system"] == "artv"])
    page.get_by_role("tab", name="ART-V").click()
    page.locator("#av-generate").click()
    page.locator("#av-status", has_text="Frame 2 of 32").wait_for(timeout=WAIT_MS)
    assert page.locator("#av-frame img").count() == 1  # frames are previewed as they stream
    page.locator("#av-cancel").click()
    page.locator("#av-status", has_text="Cancel").wait_for(timeout=30_000)
    deadline = time.time() + 60
    while studio_busy(studio) and time.time() < deadline:
        time.sleep(0.5)
    after = len([r for r in studio.runs.list() if r.settings["system"] == "artv"])
    assert after == before  # nothing half-made is saved


def studio_busy(studio) -> bool:
    import threading

    return any(t.name == "microcinema-ui-job" and t.is_alive() for t in threading.enumerate())


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def _artv_request(client, frames: int):
    table = {"headers": ["prompt", "frames"], "data": [["a red circle moving left", frames]]}
    return client.submit(table, None, 1, "", 7, api_name="/artv")


def test_full_queue_is_refused_with_a_message(page, server):
    url = server[0]
    client = _client(url)
    running = _artv_request(client, 24)  # occupies the models
    deadline = time.time() + 60
    while not studio_busy(server[1]) and time.time() < deadline:
        time.sleep(0.2)
    waiting = _artv_request(client, 1)  # fills the queue (max_queue=1)
    time.sleep(1.0)
    _fill(page, "mc-prompt", "a red circle moving left")
    page.locator("#mc-generate").click()
    page.get_by_text("The queue is full").first.wait_for(timeout=30_000)
    for job in (running, waiting):
        job.result(timeout=WAIT_MS / 1000)


def test_concurrent_requests_are_answered_or_told_the_queue_is_full(server):
    url = server[0]
    client = _client(url)

    def request(i: int) -> str:
        try:
            result = client.predict("a blue square moving right", None, "", 1, "", 9, i, api_name="/microcinema")
        except Exception as error:  # noqa: BLE001 - the client raises the server's message
            return "full" if "queue is full" in str(error).lower() else f"error: {error}"
        status, _, _, video = result[:4]
        ok = f"seed {i}**" in status and Path(video["video"] if isinstance(video, dict) else video).is_file()
        return "ok" if ok else f"bad result: {result[:2]}"

    with ThreadPoolExecutor(max_workers=5) as pool:
        outcomes = list(pool.map(request, range(5), timeout=WAIT_MS / 1000 * 3))
    assert all(o in ("ok", "full") for o in outcomes), outcomes
    assert outcomes.count("ok") >= 2 and outcomes.count("full") >= 1, outcomes


def test_fewshot_tab_uploads_tunes_and_generates(page, server, tmp_path):
    from microcinema.systems.fewshot.data import write_fewshot_clips

    write_fewshot_clips(tmp_path / "clips", "bounce", num=2, colours=["red"], objects=["circle"])
    clips = sorted((tmp_path / "clips").rglob("*.mp4"))
    page.get_by_role("tab", name="Few-shot").click()
    page.locator("#fs-clips input[type=file]").set_input_files([str(c) for c in clips])
    _fill(page, "fs-caption", "a red circle bouncing")
    _fill(page, "fs-steps", "2")
    page.locator("#fs-train").click()
    page.locator("#fs-status", has_text="Tuned 2 steps").wait_for(timeout=WAIT_MS)
    adapter = page.locator("#fs-adapter textarea, #fs-adapter input").first.input_value()
    assert adapter.endswith("adapter.safetensors") and Path(adapter).is_file()
    assert page.locator("#fs-sample video").count() == 1  # the periodic sample
    _fill(page, "fs-prompt", "a yellow star bouncing")
    _fill(page, "fs-gen-steps", "1")
    page.locator("#fs-generate").click()
    page.locator("#fs-gen-status", has_text="Done").wait_for(timeout=WAIT_MS)
    src = page.locator("#fs-video video").get_attribute("src")
    (tmp_path / "side.mp4").write_bytes(page.request.get(src).body())
    frames, _ = read_video(tmp_path / "side.mp4")
    assert frames.shape[0] == 8 and frames.shape[2] >= 2 * 64  # tuned | untuned base


@pytest.mark.parametrize("case", ["frames", "upload"])
def test_bad_input_shows_a_readable_message(page, tmp_path, case):
    if case == "frames":
        _fill(page, "mc-prompt", "a red circle moving left")
        _fill(page, "mc-frames", "4")
        page.locator("#mc-generate").click()
        status, message = "#mc-status", "num_frames must be an odd number"
    else:
        broken = tmp_path / "broken.mp4"
        broken.write_bytes(b"this is not a video")
        other = tmp_path / "other.mp4"
        other.write_bytes(b"nor is this")
        page.get_by_role("tab", name="Few-shot").click()
        page.locator("#fs-clips input[type=file]").set_input_files([str(broken), str(other)])
        _fill(page, "fs-caption", "a red circle bouncing")
        page.locator("#fs-train").click()
        status, message = "#fs-status", "broken.mp4"
    page.locator(status, has_text=message).wait_for(timeout=60_000)
    assert "Error:" in page.locator(status).inner_text() and "Traceback" not in page.content()


def test_uploaded_image_is_fitted_and_the_page_says_so(page, tmp_path):
    from PIL import Image

    Image.new("RGBA", (120, 90), (30, 200, 30, 255)).save(tmp_path / "key.png")
    _fill(page, "mc-prompt", "a green square moving up")
    _fill(page, "mc-steps", "1")
    page.locator("#mc-image input[type=file]").set_input_files(str(tmp_path / "key.png"))
    page.locator("#mc-generate").click()
    page.locator("#mc-status", has_text="Done").wait_for(timeout=WAIT_MS)
    status = page.locator("#mc-status").inner_text()
    assert "Your image was" in status and "RGBA" in status and "120" in status and "microcinema animate" in status
