"""Headless Chromium for report tests: render a page and read its DOM after scripts ran, or screenshot it.

Tests that use it skip where Chromium is not installed (Debian: apt-get install chromium). Each call gets a
fresh profile and no network services, so a page that needs the network cannot pass by accident.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run", "--virtual-time-budget=15000")


def chromium(page: Path, profile: Path, *, screenshot: Path | None = None, size: tuple[int, int] = (1200, 900),
             timeout: float = 120) -> str:
    """Load `page` headless; return its DOM once loaded, or write a `size` (width, height) PNG to `screenshot`."""
    command = [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}"]
    if screenshot is None:
        command.append("--dump-dom")
    else:
        command += [f"--screenshot={screenshot}", f"--window-size={size[0]},{size[1]}"]
    return subprocess.run([*command, page.as_uri()], capture_output=True, text=True, timeout=timeout).stdout
