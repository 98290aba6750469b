"""Label Studio's pages in headless Chromium (Debian `chromium` + `chromium-driver`, driven by selenium).

Used by tests/e2e/test_browser_e2e.py (what the annotator sees) and scripts/screenshots.py (the README's
pictures). Every wait is bounded (WebDriverWait) and polls the rendered page; selenium is pointed at the
system chromedriver, so Selenium Manager never downloads anything.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = ("run `make setup-browser` (as root it does `apt-get install chromium chromium-driver`), or point "
                "CHROMIUM_BIN and CHROMEDRIVER_BIN at a Chromium and its matching chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars")
WAIT_SECONDS = 60.0


def chromium_paths() -> tuple[str, str]:
    """Return (chromium, chromedriver) executables; raises FileNotFoundError saying how to install them."""
    chromium = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", chromium), ("chromedriver", driver)) if not path]
    if missing:
        raise FileNotFoundError(f"{' and '.join(missing)} not found: the browser tests and `make screenshots` "
                                f"need headless Chromium; {INSTALL_HINT}")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise FileNotFoundError("selenium is not installed: pip install -e '.[test]'") from None
    return chromium, driver


def start_browser(user_data_dir: Path, width: int = 1400, height: int = 900):
    """Start headless Chromium with a fresh profile in `user_data_dir`; returns the selenium driver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = chromium_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.add_argument(f"--window-size={width},{height}")
    browser = webdriver.Chrome(service=Service(driver), options=options)
    browser.set_page_load_timeout(WAIT_SECONDS)
    browser.set_script_timeout(WAIT_SECONDS)
    return browser


def wait_for(browser, condition, what: str, timeout: float = WAIT_SECONDS):
    """Return condition(browser)'s first truthy value; raise AssertionError naming `what` on timeout."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:  # React re-renders replace elements under our feet: a stale one means "look again"
        return WebDriverWait(browser, timeout, poll_frequency=0.25,
                             ignored_exceptions=(StaleElementReferenceException,)).until(condition)
    except TimeoutException:
        text = browser.find_element("tag name", "body").text[:600] if browser.page_source else ""
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} at {browser.current_url}; "
                             f"page text: {text!r}") from None


def _xpath_text(text: str) -> str:
    return f"normalize-space(.)='{text}'"


def login(browser, url: str, email: str, password: str) -> None:
    """Log in through Label Studio's login form; returns once the projects page has loaded."""
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/user/login/")
    wait_for(browser, lambda b: b.find_elements(By.NAME, "email") or "/user/login" not in b.current_url,
             "the login form")
    if "/user/login" not in browser.current_url:  # the profile is already logged in
        return
    browser.find_element(By.NAME, "email").send_keys(email)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    wait_for(browser, lambda b: "/user/login" not in b.current_url, "the login to go through")


def open_data_manager(browser, url: str, project_id: int) -> None:
    """Open the project's Data Manager and wait until its task rows are rendered."""
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/projects/{project_id}/data")
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "[data-testid=table-row]"), "Data Manager rows")


def _click_menu_item(browser, text: str) -> None:
    from selenium.webdriver.common.by import By

    item = wait_for(browser, lambda b: [e for e in b.find_elements(By.XPATH, f"//label[{_xpath_text(text)}]"
                                                                   f" | //*[@role='menuitem' or @role='option']"
                                                                   f"[{_xpath_text(text)}]") if e.is_displayed()],
                    f"the menu item {text!r}")[0]
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", item)
    item.click()


def show_columns(browser, names: list[str], attempts: int = 3) -> None:
    """Tick `names` in the Data Manager's *Columns* menu (as a user does), then reload the page once Label
    Studio has stored them. Each tick is saved by a request of its own, so a reload can still lose the last
    one: the missing columns are ticked again, up to `attempts` times (AssertionError after that)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    for _ in range(attempts):
        wanted = [name for name in names if name not in set(header_names(browser))]
        if not wanted:
            return
        before = _stored_views(browser)
        browser.find_element(By.XPATH, "//span[normalize-space(text())='Columns']").click()
        for name in wanted:
            _click_menu_item(browser, name)
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        wait_for(browser, lambda b: set(wanted) <= set(header_names(b)), f"the columns {wanted} to show")
        _reload_when_stored(browser, before, lambda b: header_names(b), f"the columns {wanted}")
    raise AssertionError(f"Label Studio did not keep the columns {names} shown (now: {header_names(browser)})")


def _order_button(browser, text: str):
    from selenium.webdriver.common.by import By

    return [e for e in browser.find_elements(By.XPATH, f"//button[{_xpath_text(text)}]"
                                                        "[not(.//*[contains(@class, 'lsf-th-content')])]")
            if e.is_displayed()]


def order_by(browser, name: str) -> None:
    """Pick `name` in the Data Manager's *Order by* menu (ascending, Label Studio's default direction)."""
    from selenium.webdriver.common.by import By

    if _order_button(browser, name):  # the view already sorts by it (views are stored per project)
        return
    before = _stored_views(browser)
    _order_button(browser, "Order by")[0].click()
    options = wait_for(browser, lambda b: [e for e in b.find_elements(By.XPATH, f"//*[{_xpath_text(name)}]")
                                           if e.is_displayed() and "lsf-th" not in (e.get_attribute("class") or "")
                                           and e.tag_name != "button"],
                       f"{name!r} in the Order by menu")
    options[-1].click()
    wait_for(browser, lambda b: _order_button(b, name), f"the Data Manager to be ordered by {name!r}")
    _reload_when_stored(browser, before, lambda b: _order_button(b, name), f"the ordering by {name!r}")


_VIEWS_JS = """
const done = arguments[arguments.length - 1];
const project = location.pathname.split('/')[2];
fetch('/api/dm/views/?project=' + project, {credentials: 'same-origin'})
  .then(r => r.json())
  .then(views => done(JSON.stringify(views.map(v => [v.ordering, (v.data || {}).ordering, (v.data || {}).hiddenColumns]))))
  .catch(() => done(null));
"""


def _stored_views(browser) -> str | None:
    """Return the ordering and hidden columns of the project's stored Data Manager views (what a reload shows)."""
    return browser.execute_async_script(_VIEWS_JS)


def _reload_when_stored(browser, before: str | None, ready, what: str) -> None:
    """Wait until Label Studio has stored a view change (its own request; reloading earlier would cancel
    it), then reload, as a user would, and wait for `ready(browser)`. The table may otherwise still show
    rows of a fetch that started before the change."""
    from selenium.webdriver.common.by import By

    wait_for(browser, lambda b: _stored_views(b) not in (before, None), f"Label Studio to store {what}")
    browser.refresh()
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "[data-testid=table-row]") and ready(b),
             f"the reloaded Data Manager with {what}")


_TABLE_JS = """
const heads = [...document.querySelectorAll('.lsf-table-head .lsf-table__cell')].map(c => c.innerText.trim());
const rows = [...document.querySelectorAll('[data-testid=table-row]')].map(r => {
  const box = r.querySelector('input[aria-label^="Select Task"]');
  return {task: box ? box.getAttribute('aria-label') : null,
          cells: [...r.querySelectorAll('.lsf-table__cell')].map(c => c.innerText.trim())};
});
return {heads, rows};
"""


def header_names(browser) -> list[str]:
    """Return the Data Manager's column titles, in display order."""
    return [h for h in browser.execute_script(_TABLE_JS)["heads"] if h]


@dataclass
class Row:
    """One rendered Data Manager row: the task id and each visible column's text, by column title."""

    task_id: int
    cells: dict[str, str]


def table_rows(browser) -> list[Row]:
    """Return the rendered Data Manager rows top to bottom (the table is virtual: only rows in view)."""
    table = browser.execute_script(_TABLE_JS)
    heads = table["heads"]
    rows = []
    for row in table["rows"]:
        match = re.search(r"(\d+)$", row["task"] or "")
        if match:
            rows.append(Row(int(match.group(1)), dict(zip(heads, row["cells"]))))
    return rows


def open_task(browser, url: str, project_id: int, task_id: int) -> None:
    """Open a task's labeling view from the Data Manager and wait for its choices to render."""
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/projects/{project_id}/data?task={task_id}")
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "input[name]")
             and b.find_elements(By.XPATH, "//button[normalize-space(.)='Submit'] | //button[normalize-space(.)='Update']"),
             f"the labeling view of task {task_id}")


def checked_choices(browser) -> list[str]:
    """Return the choices checked in the open labeling view (the pre-annotation, before any edit).

    Label Studio renders each `<Choice>` as an input named after its value (radio-like checkboxes for a
    single choice), so the names of the checked, named inputs are the chosen labels.
    """
    from selenium.webdriver.common.by import By

    return [e.get_attribute("name") for e in browser.find_elements(By.CSS_SELECTOR, "input:checked")
            if e.get_attribute("name")]


def images_loaded(browser, selector: str = "[data-testid=table-row] img", min_width: int = 0) -> bool:
    """True when at least one image matches `selector` (and is at least `min_width` CSS pixels wide on the
    page) and every such image has loaded; thumbnails load lazily."""
    return bool(browser.execute_script(
        "const imgs = [...document.querySelectorAll(arguments[0])]"
        ".filter(i => i.getBoundingClientRect().width >= arguments[1]);"
        "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);", selector, min_width))


def bottom_of(browser, css: str) -> int:
    """Return the lowest page y (CSS pixels) of the elements matching `css`, 0 when none."""
    return int(browser.execute_script(
        "return Math.max(0, ...[...document.querySelectorAll(arguments[0])]"
        ".map(e => (e.closest('label') || e.parentElement || e).getBoundingClientRect().bottom));", css))


def page_text(browser) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.TAG_NAME, "body").text
