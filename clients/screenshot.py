"""A screenshot of a served Rerun web viewer in headless Chromium (how
``clients/rerun_view.png`` was made): Debian's ``chromium``, driven over the DevTools
protocol, waits while the viewer loads and draws, then saves a PNG and prints what the
page logged (WebGL support, errors).

    s2loop run --view web --trace --max-steps 150 ...    # prints the viewer's URL
    python -m clients.screenshot URL shot.png --wait 150

Chromium runs with ``--headless --no-sandbox --disable-gpu`` and no network of its own
(no QUIC, background networking, component updates or sync) in a fresh profile; WebGL
then runs on its software rasterizer (the viewer says "Software rasterizer").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _page_socket(port: int, timeout_s: float = 20.0) -> str:
    end = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json") as resp:
                tabs = json.load(resp)
            return next(t["webSocketDebuggerUrl"] for t in tabs if t["type"] == "page")
        except (OSError, StopIteration):
            if time.monotonic() > end:
                raise
            time.sleep(0.1)


async def _capture(ws_url: str, url: str, wait_s: float, size: tuple[int, int]) -> tuple:
    import websockets

    logs: list[str] = []

    def note(msg: dict[str, Any]) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            logs.append(f"exception: {params['exceptionDetails'].get('text', '')}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            entry = params["entry"]
            where = f" ({entry['url']})" if entry.get("url") else ""
            logs.append(f"{entry['level']}: {entry['text'][:200]}{where}")

    async with websockets.connect(ws_url, max_size=None) as ws:
        counter = 0

        async def call(method: str, **params: Any) -> dict[str, Any]:
            nonlocal counter
            counter += 1
            await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == counter:
                    return msg.get("result", {})
                note(msg)

        for domain in ("Runtime", "Log", "Page"):
            await call(f"{domain}.enable")
        await call(
            "Emulation.setDeviceMetricsOverride",
            width=size[0],
            height=size[1],
            deviceScaleFactor=1,
            mobile=False,
        )
        await call("Page.navigate", url=url)
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                note(json.loads(await asyncio.wait_for(ws.recv(), 0.5)))
        shot = await call("Page.captureScreenshot", format="png")
        probe = "JSON.stringify({webgl2: !!document.createElement('canvas').getContext('webgl2')})"
        gl = await call("Runtime.evaluate", expression=probe)
        return base64.b64decode(shot["data"]), gl["result"].get("value"), logs


@dataclass(frozen=True)
class ScreenshotOptions:
    """A screenshot of a served Rerun web viewer in headless Chromium."""

    url: str
    """the viewer's URL (``s2loop run --view web`` prints it)"""
    out: str
    """the PNG to write"""
    wait: float = 120.0
    """seconds to let it load and draw"""
    size: tuple[int, int] = (1600, 1000)
    """window width and height, pixels"""


def screenshot(opts: ScreenshotOptions) -> tuple[str | None, list[str]]:
    """Load ``opts.url`` in headless Chromium, wait ``opts.wait`` s, save a PNG to
    ``opts.out``; returns the WebGL probe and the page's errors and warnings."""
    url, out, wait_s, size = opts.url, opts.out, opts.wait, opts.size
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        raise RuntimeError("no chromium on PATH (Debian: apt-get install chromium)")
    port = 9333
    with tempfile.TemporaryDirectory(prefix="s2loop-chromium-") as profile:
        args = [binary, *FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
                f"--window-size={size[0]},{size[1]}", "about:blank"]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            png, gl, logs = asyncio.run(_capture(_page_socket(port), url, wait_s, size))
        finally:
            proc.terminate()
            proc.wait(10)
    with open(out, "wb") as f:
        f.write(png)
    return gl, logs


def main() -> None:
    from s2loop.commands import parse

    opts = parse(ScreenshotOptions, sys.argv[1:], "python -m clients.screenshot", positional=True)
    gl, logs = screenshot(opts)
    print(f"wrote {opts.out}; WebGL: {gl}")
    for line in logs[-20:]:
        print(line)


if __name__ == "__main__":
    main()
