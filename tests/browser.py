"""Open a boot report the way a person would: in a real headless Chromium (Debian's package),
inside a network namespace of its own with only loopback (Chromium's own update and time
requests cannot leave it). Keeps a screenshot per page as a test artifact and returns the DOM
Chromium built, and every request the page itself started."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ARTIFACTS = Path(os.environ.get("VLAB_TEST_ARTIFACTS", "/tmp/vlab-test-artifacts"))
NETNS = "vlab-test-browser"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--window-size=1280,1000"]


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("chromium") is None:
        raise AssertionError("chromium is missing: make deps installs it (scripts/install-deps.sh)")
    if not Path("/run/netns", NETNS).exists():
        subprocess.run(["ip", "netns", "add", NETNS], check=True)
        subprocess.run(["ip", "-n", NETNS, "link", "set", "lo", "up"], check=True)
    return subprocess.run(["ip", "netns", "exec", NETNS, "chromium", *FLAGS, *args],
                          capture_output=True, text=True, timeout=120)


def look(page: Path, name: str) -> tuple[str, list[str]]:
    """(the DOM as Chromium built it, the URLs the page itself asked for); the screenshot
    goes to ARTIFACTS/NAME.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    url = page.absolute().as_uri()
    shot = _chromium(f"--screenshot={ARTIFACTS / f'{name}.png'}", url)
    assert (ARTIFACTS / f"{name}.png").is_file(), shot.stderr[-2000:]
    with tempfile.TemporaryDirectory() as tmp:
        netlog = Path(tmp) / "net.json"
        dom = _chromium(f"--log-net-log={netlog}", "--dump-dom", url)
        assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-2000:]
        log = json.loads(netlog.read_text())
    kinds = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    starts = [e.get("params", {}) for e in log["events"]
              if kinds.get(e["type"]) == "URL_REQUEST_START_JOB"]
    asked = [p["url"] for p in starts  # its end events carry no url
             if "url" in p and p.get("initiator") != "not an origin"]  # not Chromium's own
    return dom.stdout, asked


def close() -> None:
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)


def seen(rep: dict[str, Any], name: str, look: Callable[[Path, str], tuple[str, list[str]]],
         written: Path | None = None) -> str:
    """A lab's boot report as a person sees it (the page vlab wrote, when `written`, else
    one rendered here from `rep`): one row per terminal, each phase bar as wide as its
    measured seconds on the shared axis, each failure's cause on the page, nothing fetched.
    Returns the DOM."""
    from vlab.report import html_page

    page = ARTIFACTS / f"{name}.html"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    if written is not None:
        shutil.copyfile(written, page)
    else:
        page.write_text(html_page.page(rep))
    dom, asked = look(page, name)
    assert asked == [], asked
    assert dom.count('<tr class="terminal') == len(rep["terminals"])
    longest = max([float(t.get("seconds") or 0) for t in rep["terminals"]] + [1.0])
    bars = re.findall(r'data-start="([\d.]+)" data-end="([\d.]+)" x="[\d.]+" y="2" '
                      r'width="([\d.]+)"', dom)
    assert bars, "no timeline"
    for start, end, width in bars:
        want = (float(end) - float(start)) * html_page.BAR_WIDTH / longest
        assert abs(float(width) - want) <= 0.2, (start, end, width, want)
    for t in rep["terminals"]:
        assert f'id="servers-{t["name"]}"' in dom, t["name"]  # what the servers saw of it
        if t["verdict"] != "ok" and t.get("cause"):
            assert html.escape(t["cause"], quote=False) in dom, t["cause"]
    return dom
