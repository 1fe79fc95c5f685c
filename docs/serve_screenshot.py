"""Redraw docs/images/serve.png: serve a run, classify its first held-out example in headless
Chromium, and screenshot the page.

    python docs/serve_screenshot.py RUN [OUT.png]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from transferlab.serve import Server

FLAGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars"]


def main() -> None:
    run = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).parent / "images" / "serve.png"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    with Server(run, port=0) as server, tempfile.TemporaryDirectory() as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=chromium, headless=True, args=FLAGS,
                                                        viewport={"width": 1200, "height": 900})
        page = context.pages[0] if context.pages else context.new_page()
        page.goto(server.url, wait_until="load")
        expect(page.locator("#examples")).to_be_visible(timeout=60_000)
        page.locator("#examples button").nth(1).click()
        page.click("#classify")
        page.wait_for_function("() => { const i = document.querySelector('#overlay img');"
                               " return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(out), full_page=True)
        context.close()
    print(out)


if __name__ == "__main__":
    main()
