"""Screenshots of every tab of the web UI after a real run on the embedded models (issue 20), for docs/ui/.

    python scripts/ui_screenshots.py --out docs/ui [--chromium /usr/bin/chromium] [--tune-steps 200]

Starts the app on a free loopback port with a fresh outputs folder, then in headless Chromium: a MicroCinema
video (the model's steps), a 2-prompt ART-V video, a few-shot tuning run on 8 procedural red-circle bounce clips
followed by
a generation with the adapter, and the gallery with a run selected. Prints the time each took.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/ui"))
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    parser.add_argument("--tune-steps", type=int, default=200)
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from microcinema.systems.fewshot.data import write_fewshot_clips
    from microcinema.ui.app import build_app, offline_theme
    from microcinema.ui.backend import Studio

    work = Path(tempfile.mkdtemp(prefix="microcinema_ui_shots_"))
    # one caption for every clip (the UI's upload): the clips must show what it says
    write_fewshot_clips(work / "clips", "bounce", num=8, colours=["red"], objects=["circle"])
    clips = sorted((work / "clips").rglob("*.mp4"))
    studio = Studio(outputs=work / "outputs")
    demo = build_app(studio)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                theme=offline_theme())
    args.out.mkdir(parents=True, exist_ok=True)
    wait = 900_000
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto(f"http://127.0.0.1:{port}", wait_until="networkidle")

        def shot(name: str, label: str, started: float) -> None:
            page.wait_for_timeout(1500)  # the video element settles
            page.screenshot(path=str(args.out / f"{name}.png"), full_page=True)
            print(f"{label}: {time.time() - started:.1f} s")

        started = time.time()
        page.locator("#mc-prompt textarea").fill("a green star moving right on a navy background")
        page.locator("#mc-generate").click()
        page.locator("#mc-status", has_text="Done").wait_for(timeout=wait)
        shot("microcinema", "microcinema tab", started)

        started = time.time()
        page.get_by_role("tab", name="ART-V").click()
        page.locator("#av-generate").click()
        page.locator("#av-status", has_text="Done").wait_for(timeout=wait)
        shot("artv", "ART-V tab", started)

        started = time.time()
        page.get_by_role("tab", name="Few-shot").click()
        page.locator("#fs-clips input[type=file]").set_input_files([str(c) for c in clips])
        page.locator("#fs-caption textarea").fill("a red circle bouncing")
        page.locator("#fs-steps input").fill(str(args.tune_steps))
        page.locator("#fs-train").click()
        page.locator("#fs-status", has_text="Tuned").wait_for(timeout=wait)
        page.locator("#fs-prompt textarea").fill("a yellow triangle bouncing")
        page.locator("#fs-generate").click()
        page.locator("#fs-gen-status", has_text="Done").wait_for(timeout=wait)
        shot("fewshot", "few-shot tab", started)

        page.get_by_role("tab", name="Past runs").click()
        page.locator("#runs-refresh").click()
        page.wait_for_timeout(1500)
        page.locator("#runs-gallery button.thumbnail-item").first.click()
        page.locator("#runs-settings", has_text="seed").wait_for(timeout=30_000)
        shot("past_runs", "past runs tab", time.time())
        browser.close()
    demo.close()
    print(f"wrote {', '.join(str(args.out / n) for n in ('microcinema.png', 'artv.png', 'fewshot.png', 'past_runs.png'))}")


if __name__ == "__main__":
    main()
