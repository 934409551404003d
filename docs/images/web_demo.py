"""Make docs/images/web-demo.png: the page `nnspec web` writes for the quickstart, with a digit
drawn on its canvas (mouse events in headless Chromium) and the model's prediction.

    nnspec train examples/quickstart.yaml          # runs/quickstart
    python docs/images/web_demo.py [RUN_DIR] [--out docs/images/web-demo.png]

Needs Debian's chromium and the playwright package (never `playwright install`).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
# A "3": two arcs, in 0..1 of the canvas.
STROKES = [[(0.30, 0.22), (0.42, 0.14), (0.60, 0.14), (0.70, 0.24), (0.66, 0.38),
            (0.50, 0.46), (0.40, 0.47)],
           [(0.50, 0.47), (0.68, 0.55), (0.72, 0.70), (0.62, 0.83), (0.44, 0.86),
            (0.28, 0.78)]]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", nargs="?", default=str(ROOT / "runs" / "quickstart"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "images" / "web-demo.png"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        page_dir = Path(folder) / "page"
        subprocess.run([sys.executable, "-m", "nnspec", "web", args.run, "--out",
                        str(page_dir)], check=True)
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(page_dir)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 600})
            page.goto(f"http://127.0.0.1:{server.server_address[1]}/")
            page.evaluate("window.nnspec.ready")
            box = page.locator("canvas.draw").bounding_box()
            for stroke in STROKES:
                points = [(box["x"] + x * box["width"], box["y"] + y * box["height"])
                          for x, y in stroke]
                page.mouse.move(*points[0])
                page.mouse.down()
                for point in points[1:]:
                    page.mouse.move(*point, steps=10)
                page.mouse.up()
            page.wait_for_selector(".bar.top")
            page.wait_for_timeout(200)
            page.screenshot(path=args.out, full_page=True)
            print(f"{args.out}: predicted {page.inner_text('.big')}; "
                  f"{page.inner_text('#status')}")
            browser.close()
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
