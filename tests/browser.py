"""The dashboard in a real browser: Debian's Chromium driven by Playwright (never a
browser Playwright downloads; this machine cannot fetch one).

:class:`DashboardPage` opens a pipeline's dashboard, keeps every console error and page
error, and waits on conditions in the page; a failure saves a screenshot under the test's
temporary directory and names its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

# As root, in a container, with a closed network: no sandbox, no GPU, and none of the
# background connections Chromium makes at start (each refused by the network).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# What the page shows for a figure it has no value for yet (an en dash).
NONE_YET = "\u2013"


class DashboardPage:
    """One open dashboard."""

    def __init__(self, browser: Browser, url: str, shots: Path) -> None:
        self.url = url
        self.shots = shots
        self.errors: list[str] = []
        self.page: Page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.goto(url)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console error: {message.text}")

    def screenshot(self, name: str = "dashboard") -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def text(self, element_id: str) -> str:
        return str(self.page.locator(f"#{element_id}").inner_text())

    def number(self, element_id: str) -> float:
        """A figure the page shows (``12,345``; the dash for none yet reads as -1)."""
        text = self.text(element_id).replace(",", "").split()[0]
        return -1.0 if text == NONE_YET else float(text)

    def wait(self, js: str, what: str, arg: Any = None, timeout: float = 20) -> None:
        """Wait until the page function ``js`` (given ``arg``) is truthy; else fail with
        what was awaited and a screenshot's path."""
        try:
            self.page.wait_for_function(js, arg=arg, timeout=timeout * 1000)
        except Exception as exc:
            shot = self.screenshot("failure")
            raise AssertionError(
                f"the dashboard did not show {what} within {timeout}s ({type(exc).__name__}); "
                f"screenshot: {shot}; errors: {self.errors}"
            ) from None

    def wait_text(self, element_id: str, predicate_js: str, what: str, **kw: Any) -> None:
        """Wait until ``predicate_js`` (an expression of ``t``, the element's text)
        holds."""
        self.wait(
            f"(id) => {{ const el = document.getElementById(id); if (!el) return false; "
            f"const t = el.textContent; return {predicate_js}; }}",
            what,
            arg=element_id,
            **kw,
        )

    def close(self) -> None:
        self.page.close()
