"""The mirror's pages in a real browser: headless Chromium against the server on 127.0.0.1.

Chromium renders the status page, the golden record's page and the hostile record's page;
the rendered DOM is checked for what a person sees (markup from the network shows as text,
never runs), and a screenshot of each is saved under ``test-artifacts/`` for people to look
at. Chromium comes from Debian's ``chromium`` package (``make browser-deps``); without it
these tests fail, they do not skip.
"""

from __future__ import annotations

import os
import struct
from functools import partial
from pathlib import Path

import pytest
import trio

from pithnode.node.http_mirror import serve_http
from tests.test_http_mirror import (
    GOLDEN_PN,
    GOLDEN_SHA,
    GOLDEN_TITLE,
    HOSTILE_AUTHORS,
    HOSTILE_TITLE,
    PEER_ID,
    FakeMirrorNode,
    Page,
)

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
WIDTH, HEIGHT = 1280, 1600
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-proxy-server", "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}",
)
CHROMIUM_TIMEOUT = 60


def chromium() -> Path:
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"headless Chromium is not installed ({CHROMIUM} is missing): run "
                    "`make browser-deps` (Debian's chromium package) and test again",
                    pytrace=False)
    return CHROMIUM


async def render(url: str, screenshot: Path, home: Path) -> Page:
    """Load ``url`` once: the DOM after rendering comes back, the screenshot is saved."""
    home.mkdir(parents=True, exist_ok=True)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    args = [str(chromium()), *FLAGS, f"--user-data-dir={home / 'profile'}", "--dump-dom",
            f"--screenshot={screenshot}", url]
    env = {**os.environ, "HOME": str(home)}  # keeps Chromium's dot-files out of $HOME
    with trio.fail_after(CHROMIUM_TIMEOUT):
        proc = await trio.run_process(args, capture_stdout=True, capture_stderr=True,
                                      check=False, env=env)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (WIDTH, HEIGHT)
    return Page(proc.stdout.decode())


@pytest.fixture
async def served(nursery: trio.Nursery) -> tuple[FakeMirrorNode, str]:
    chromium()  # fail first, with the fix, when there is no browser
    api = FakeMirrorNode()
    url: str = await nursery.start(partial(serve_http, api, metrics=api.metrics))
    return api, url


async def test_status_page_in_chromium(served: tuple[FakeMirrorNode, str],
                                       tmp_path: Path) -> None:
    _, url = served
    page = await render(url + "/", ARTIFACTS / "status.png", tmp_path)
    text = page.visible
    assert "Node status" in text and PEER_ID in text and "pith-mainnet" in text
    assert "Look up a record" in text and ("action", "/resolve") in page.attrs
    assert "Recent events" in text and "record_created" in text
    # a hostile peer id shows as text (shortened, in full in the tooltip)
    assert "12D3KooWPeer<b>B" in text and ("title", "12D3KooWPeer<b>Beta</b>") in page.attrs
    assert "script" not in page.tags


async def test_record_page_in_chromium(served: tuple[FakeMirrorNode, str],
                                       tmp_path: Path) -> None:
    _, url = served
    suffix = GOLDEN_PN.rsplit(":", 1)[1]
    page = await render(f"{url}/pith/{suffix}", ARTIFACTS / "record.png", tmp_path)
    text = page.visible
    assert GOLDEN_TITLE in text and "Daniel A. Roberts" in text
    assert GOLDEN_SHA in text and "✓ registry receipt valid" in text
    assert "10.48550/arxiv.1812.04754" in text and "1812.04754v1" in text
    assert ("href", f"/pith/{suffix}/state.json") in page.attrs


async def test_hostile_record_page_in_chromium(served: tuple[FakeMirrorNode, str],
                                               tmp_path: Path) -> None:
    api, url = served
    suffix = api.hostile.full.rsplit(":", 1)[1]
    page = await render(f"{url}/pith/{suffix}", ARTIFACTS / "record-hostile.png", tmp_path)
    # the browser shows the title as the literal text it is; nothing was parsed as markup
    assert HOSTILE_TITLE in page.visible and HOSTILE_AUTHORS in page.visible
    assert "script" not in page.tags and "img" not in page.tags and "svg" not in page.tags
    assert not [k for k, _ in page.attrs if k.startswith("on")]
    assert "Equivocations (1)" in page.visible and "✗ 1 failed" in page.visible
