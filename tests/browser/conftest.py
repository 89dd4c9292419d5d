"""A real headless Chromium (Debian's `chromium`, driven by Selenium through Debian's
`chromium-driver`) that can reach loopback only: every other host name fails to resolve, so a
page that needs a CDN breaks here as it would offline. Screenshots go to tests/.artifacts/
(ARTIFACTS_DIR), kept after the run."""

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(
    os.environ.get("ARTIFACTS_DIR") or Path(settings.BASE_DIR) / "tests" / ".artifacts"
)

needs_browser = pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER))
    and not os.environ.get("REQUIRE_BROWSER"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them and sets "
    "REQUIRE_BROWSER=1)",
)


@pytest.fixture
def browser() -> Iterator["Browser"]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    try:
        yield Browser(driver)
    finally:
        driver.quit()


class Browser:
    """The driver, with waits that fail with what the page showed and logged."""

    def __init__(self, driver: object) -> None:
        from selenium.webdriver.remote.webdriver import WebDriver

        assert isinstance(driver, WebDriver)
        self.driver = driver

    def wait(self, condition: str, timeout: float = 30, *args: object) -> object:
        """Wait until the JavaScript expression `condition` (a function body's return value)
        is truthy; return it."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
                lambda d: d.execute_script(f"return ({condition});", *args)
            )
        except TimeoutException:
            raise AssertionError(
                f"timed out waiting for {condition}\npage: {self.text()[:3000]}"
            ) from None

    def js(self, script: str, *args: object) -> object:
        return self.driver.execute_script(script, *args)

    def text(self) -> str:
        return str(self.js("return document.body.innerText;"))

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def resources(self) -> list[str]:
        """Every URL the page loaded (scripts, styles, fetches), the page itself included."""
        return list(
            self.js(  # type: ignore[arg-type]
                "return [location.href, ...performance.getEntriesByType('resource')"
                ".map(e => e.name)];"
            )
        )
