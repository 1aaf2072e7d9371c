"""The leaderboard in a real browser: headless Chromium (Debian's chromium + chromium-driver) via selenium.

Builds a site from real result folders (one whose system names are script-injection attempts), opens it from
file://, and checks: no console errors, sorting reorders rows, a system link opens its per-query page, and none of
the injected markup executes or even becomes an element. The layout is checked at 1280 and 390 px on the shipped
site (leaderboard/results): study tables never wider than their container, the verdict column in view at 1280 px,
no page-level horizontal overflow at 390 px, a sticky System column; sorting, filtering and the table baseline
survive a reload through the address. Screenshots go to ``$KNOWACQ_TEST_ARTIFACTS/screenshots`` (CI uploads them),
else to the test's tmp dir.
"""
from __future__ import annotations

import shutil
import time

import pytest

from test_leaderboard import XSS_NAMES, write_results_folder  # noqa: F401  (the real-results fixture builder)

from pyterrier_knowacq.leaderboard.build import build_site

CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser') or shutil.which('google-chrome')
CHROMEDRIVER = shutil.which('chromedriver')

# Runs before any page script (CDP): records every alert/confirm/prompt and every element carrying an inline event
# handler or a script that is not ours, so that a broken escape is caught even if the browser would block it.
WATCH = """
window.__xss = window.__xss || [];
['alert', 'confirm', 'prompt'].forEach(function (f) {
  window[f] = function (msg) { window.__xss.push(f + ':' + msg); };
});
new MutationObserver(function (records) {
  records.forEach(function (r) {
    r.addedNodes.forEach(function (n) {
      if (n.nodeType !== 1) { return; }
      var all = [n].concat(Array.prototype.slice.call(n.querySelectorAll('*')));
      all.forEach(function (el) {
        Array.prototype.forEach.call(el.attributes, function (a) {
          if (/^on/i.test(a.name)) { window.__xss.push('handler:' + el.tagName + '.' + a.name); }
        });
        if (el.tagName === 'SCRIPT' && el.src.indexOf('assets/leaderboard.js') === -1 && el.type !== 'application/json') {
          window.__xss.push('script:' + el.textContent.slice(0, 40));
        }
      });
    });
  });
}).observe(document, {childList: true, subtree: true});
"""


@pytest.fixture(scope='module')
def driver():
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip('chromium and chromedriver binaries are not installed (CI installs them with '
                    '.ci/install-chromium.sh: Debian packages chromium, chromium-driver)')
    from selenium import webdriver  # a test dependency (setup.cfg [test]): missing selenium is a failure, not a skip
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu', '--window-size=1360,1000',
                '--allow-file-access-from-files', '--disable-extensions', '--no-first-run'):
        options.add_argument(arg)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    options.set_capability('unhandledPromptBehavior', 'ignore')
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    drv.execute_cdp_cmd('Page.addScriptToEvaluateOnNewDocument', {'source': WATCH})
    yield drv
    drv.quit()


def _problems(driver):
    """Console errors and anything the watcher recorded (an open alert counts too)."""
    from selenium.common.exceptions import NoAlertPresentException
    try:
        text = driver.switch_to.alert.text
        return [f'alert open: {text}']
    except NoAlertPresentException:
        pass
    errors = [e['message'] for e in driver.get_log('browser') if e['level'] in ('SEVERE', 'ERROR')]
    return errors + list(driver.execute_script('return window.__xss || ["watcher missing"]'))


def _order(driver, table):
    return [r.get_attribute('data-name') for r in table.find_elements('css selector', 'tbody tr.main')]


def _shots(tmp_path):
    """Where screenshots go: $KNOWACQ_TEST_ARTIFACTS/screenshots (kept as CI artifacts), else the test's tmp dir."""
    import os
    from pathlib import Path
    root = os.environ.get('KNOWACQ_TEST_ARTIFACTS')
    folder = Path(root) / 'screenshots' if root else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _full_page_shot(driver, path, width):
    """A screenshot of the whole page at ``width`` CSS px (the window grown to the page height, at most 8000 px)."""
    inner = driver.execute_script('return window.innerWidth')
    height = driver.execute_script('return document.documentElement.scrollHeight')
    driver.set_window_size(width + (width - inner) if inner != width else width, min(height, 8000))
    driver.save_screenshot(str(path))
    print(f'screenshot: {path}')


def _at_width(driver, width, height=1000):
    driver.set_window_size(width, height)
    inner = driver.execute_script('return window.innerWidth')
    if inner != width:   # the window has borders: make the viewport itself `width` px wide
        driver.set_window_size(width + (width - inner), height)
    assert driver.execute_script('return window.innerWidth') == width


def test_site_in_headless_chromium(driver, tmp_path):
    _at_width(driver, 1360)
    results = tmp_path / 'results'
    write_results_folder(results / 'xss', {XSS_NAMES[0]: 'bm25', XSS_NAMES[1]: 'tasb', XSS_NAMES[2]: 'repllama'},
                         experiment='xss</script><script>alert(2)</script>', study='<u>study</u>',
                         tags={XSS_NAMES[0]: '</script><img src=x onerror=alert(3)>'})
    write_results_folder(results / 'first', {'BM25': 'bm25', 'SPLADE++': 'splade-pp-ed', 'BM25+RM3': 'bm25-rm3'},
                         analysis=True)
    index = build_site([results / 'xss', results / 'first'], tmp_path / 'site')
    driver.get(index.resolve().as_uri())
    assert driver.title.startswith('Overview')
    assert driver.execute_script('return window.__xss') == []  # the watcher is installed and saw nothing

    # the injected names are shown as text, exactly
    links = driver.find_elements('css selector', 'a.syslink')
    assert {link.text for link in links} >= set(XSS_NAMES)
    assert not driver.find_elements('css selector', 'main img')  # no <img> became an element on the overview
    # the filter choices (from JSON embedded in <script>) decode to the exact injected tag value
    backbone = driver.find_element('css selector', 'select[data-filter="backbone"]')
    options = [o.get_attribute('value') for o in backbone.find_elements('tag name', 'option')]
    assert '</script><img src=x onerror=alert(3)>' in options

    shot = _shots(tmp_path) / 'leaderboard-overview.png'
    driver.save_screenshot(str(shot))
    print(f'\nscreenshot: {shot}')

    # sorting: clicking the System header reorders the rows (A-Z), clicking again reverses
    table = driver.find_element('css selector', 'table.lb[data-table]')
    before = _order(driver, table)
    table.find_element('xpath', './/th[.//button[text()="System"]]').click()
    after = _order(driver, table)
    assert after != before and sorted(after) == sorted(before)
    table.find_element('xpath', './/th[.//button[text()="System"]]').click()
    assert _order(driver, table) == after[::-1]

    # filtering by first stage hides the other rows
    from selenium.webdriver.support.ui import Select
    Select(driver.find_element('css selector', 'select[data-filter="first_stage"]')).select_by_value('bm25')
    visible = [r for r in table.find_elements('css selector', 'tbody tr.main') if r.is_displayed()]
    assert len(visible) == 2 and len(before) == 6
    Select(driver.find_element('css selector', 'select[data-filter="first_stage"]')).select_by_value('')
    assert len([r for r in table.find_elements('css selector', 'tbody tr.main') if r.is_displayed()]) == 6
    assert _problems(driver) == []

    # a system link opens its per-query page
    target = next(link for link in driver.find_elements('css selector', 'a.syslink') if link.text == XSS_NAMES[1])
    target.click()
    for _ in range(50):
        if '/systems/' in driver.current_url:
            break
        time.sleep(0.1)
    assert '/systems/' in driver.current_url
    assert driver.find_element('css selector', 'h1.sysname').text.startswith(XSS_NAMES[1])
    rows = driver.find_elements('css selector', 'table.perquery tbody tr')
    assert len(rows) == 43
    assert driver.find_elements('css selector', 'svg.chart rect')
    shot = _shots(tmp_path) / 'leaderboard-system.png'
    driver.save_screenshot(str(shot))
    print(f'screenshot: {shot}')
    driver.execute_script('window.scrollTo(0, document.querySelector("figure.chart").offsetTop - 20)')
    shot = _shots(tmp_path) / 'leaderboard-system-chart.png'
    driver.save_screenshot(str(shot))
    print(f'screenshot: {shot}')
    assert _problems(driver) == []

    # the study page with claims and plots renders and runs nothing injected
    study = next(p for p in (index.parent / 'studies').glob('spine-*.html'))
    driver.get(study.resolve().as_uri())
    assert driver.find_elements('css selector', 'table.claims tbody tr')
    assert all(img.get_attribute('naturalWidth') != '0' for img in driver.find_elements('css selector', '.plots img'))
    shot = _shots(tmp_path) / 'leaderboard-study.png'
    driver.save_screenshot(str(shot))
    print(f'screenshot: {shot}')
    assert _problems(driver) == []


@pytest.mark.slow
def test_quickstart_site_in_headless_chromium(driver, tmp_path, capsys):
    """`knowacq quickstart` ends with the leaderboard; the site works in Chromium (about 3-8 min on 2 CPU cores).

    Set KNOWACQ_QUICKSTART_RESULTS to an existing quickstart results folder to skip re-running the experiment.
    """
    import os
    from pyterrier_knowacq.cli import main as knowacq
    results = os.environ.get('KNOWACQ_QUICKSTART_RESULTS')
    site = tmp_path / 'site'
    if results:
        assert knowacq(['leaderboard', results, '-o', str(site)]) == 0
    else:
        assert knowacq(['quickstart', '-o', str(tmp_path / 'results'), '--site', str(site)]) == 0
    out = capsys.readouterr().out
    index = site / 'index.html'
    assert f'[knowacq] leaderboard: {index.resolve()}' in out
    _check_quickstart_site(driver, index, tmp_path)


def test_quickstart_file_site_in_headless_chromium(driver, tmp_path, capsys):
    """The quickstart experiment file on two topics per collection, then `knowacq leaderboard`, checked in Chromium."""
    from pathlib import Path
    from pyterrier_knowacq.cli import main as knowacq
    quickstart = Path(__file__).resolve().parents[1] / 'experiments' / 'quickstart.yaml'
    results, site = tmp_path / 'quickstart', tmp_path / 'site'
    assert knowacq(['run', str(quickstart), '-o', str(results), '--limit-topics', '2']) == 0
    assert knowacq(['leaderboard', str(results), '-o', str(site)]) == 0
    index = site / 'index.html'
    assert f'[knowacq] leaderboard: {index.resolve()}' in capsys.readouterr().out
    _check_quickstart_site(driver, index, tmp_path)


def _check_quickstart_site(driver, index, tmp_path):
    _at_width(driver, 1360)
    driver.get(index.resolve().as_uri())
    tables = driver.find_elements('css selector', 'table.lb[data-table]')
    assert len(tables) == 2  # dl19 and dl20
    names = [a.text for a in tables[0].find_elements('css selector', 'a.syslink')]
    assert set(names) == {'BM25', 'PISA BM25 (31k slice)', 'BM25 >> MiniLM bi-encoder'}
    shot = _shots(tmp_path) / 'quickstart-overview.png'
    driver.save_screenshot(str(shot))
    print(f'\nscreenshot: {shot}')
    before = _order(driver, tables[0])
    tables[0].find_element('xpath', './/th[.//button[text()="System"]]').click()
    assert _order(driver, tables[0]) != before
    next(a for a in tables[0].find_elements('css selector', 'a.syslink') if a.text == 'BM25 >> MiniLM bi-encoder').click()
    for _ in range(50):
        if '/systems/' in driver.current_url:
            break
        time.sleep(0.1)
    assert driver.find_elements('css selector', 'table.perquery tbody tr')
    assert driver.find_elements('css selector', 'svg.chart rect')
    shot = _shots(tmp_path) / 'quickstart-system.png'
    driver.save_screenshot(str(shot))
    print(f'screenshot: {shot}')
    assert _problems(driver) == []


# --- layout at 1280 and 390 px, state in the address: on the shipped site (leaderboard/results) -----------------

OVERFLOW = """
var out = [];
document.querySelectorAll('table').forEach(function (t) {
  if (!t.offsetParent) { return; }
  var box = t.parentElement.getBoundingClientRect(), own = t.getBoundingClientRect();
  if (own.width > t.parentElement.clientWidth + 1) { out.push(t.className + ': ' + Math.round(own.width) + ' > ' + t.parentElement.clientWidth); }
});
return out;
"""


@pytest.fixture(scope='module')
def shipped_site(tmp_path_factory):
    from pathlib import Path
    from pyterrier_knowacq.leaderboard.build import build_shipped
    if not (Path(__file__).resolve().parents[1] / 'leaderboard' / 'results').is_dir():
        pytest.skip('no leaderboard/results in this checkout')
    return build_shipped(tmp_path_factory.mktemp('shipped') / 'site').parent


def test_study_pages_fit_1280_and_390(driver, shipped_site, tmp_path):
    """Every table of every study page fits its container (no horizontal scroll) at 1280 and 390 px, the verdict
    column is inside the viewport at 1280 px, the claims stack into cards at 390 px, and each plot is shown once."""
    studies = sorted((shipped_site / 'studies').glob('*.html'))
    assert studies
    shots = _shots(tmp_path)
    for width in (1280, 390):
        for page in studies:
            _at_width(driver, width)
            driver.get(page.resolve().as_uri())
            assert driver.execute_script(OVERFLOW) == [], (page.name, width)
            assert driver.execute_script('return document.documentElement.scrollWidth') <= width, (page.name, width)
            claims = driver.find_elements('css selector', 'table.claims')
            for table in claims:
                verdicts = table.find_elements('css selector', 'td.verdict-cell .verdict')
                assert verdicts and all(v.text.strip() for v in verdicts)
                if width == 1280:
                    head = table.find_element('css selector', 'th.h-verdict')
                    right = driver.execute_script('return arguments[0].getBoundingClientRect().right', head)
                    assert right <= 1280, (page.name, right)
                    assert table.find_element('css selector', 'thead').is_displayed()
                else:   # stacked: the header row is hidden, each cell carries its label
                    assert driver.execute_script(
                        'return getComputedStyle(arguments[0].querySelector("tbody tr")).display', table) == 'block'
            imgs = driver.find_elements('css selector', '.plots img')
            srcs = [i.get_attribute('src').rsplit('/', 1)[-1].rsplit('.', 1)[0] for i in imgs]
            assert len(srcs) == len(set(srcs)), 'a plot is shown twice'
            _full_page_shot(driver, shots / f'study-{page.stem}-{width}.png', width)
    assert _problems(driver) == []


def test_plot_enlarges_on_click(driver, shipped_site):
    page = next(p for p in sorted((shipped_site / 'studies').glob('*.html')) if 'class="zoom"' in p.read_text())
    _at_width(driver, 1280)
    driver.get(page.resolve().as_uri())
    link = driver.find_element('css selector', 'a.zoom')
    driver.execute_script('arguments[0].scrollIntoView()', link)
    small = driver.execute_script('return arguments[0].querySelector("img").getBoundingClientRect().width', link)
    link.click()
    dialog = driver.find_element('css selector', 'dialog.zoom-dialog')
    assert dialog.get_attribute('open') is not None
    big = driver.execute_script('return document.querySelector("dialog.zoom-dialog img").getBoundingClientRect().width')
    assert big > small * 1.5, (small, big)
    dialog.find_element('css selector', 'button.zoom-close').click()
    assert dialog.get_attribute('open') is None
    assert _problems(driver) == []


def test_overview_390_no_overflow_sticky_system(driver, shipped_site, tmp_path):
    """At 390 px the page never scrolls sideways; each table scrolls inside its box with the System column stuck to
    the left; at 1280 px the same. The first score column is visible at 390 px without scrolling."""
    shots = _shots(tmp_path)
    index = shipped_site / 'index.html'
    for width in (1280, 390):
        _at_width(driver, width)
        driver.get(index.resolve().as_uri())
        assert driver.execute_script('return document.documentElement.scrollWidth') <= width
        table = driver.find_element('css selector', 'table.lb[data-table]')
        box = driver.execute_script('return arguments[0].parentElement', table)
        cell = table.find_element('css selector', 'tbody tr.main td.system')
        first_score = table.find_elements('css selector', 'tbody tr.main td.num')[0]
        assert driver.execute_script('return arguments[0].getBoundingClientRect().right', first_score) <= width
        if width == 390:
            before = driver.execute_script('return arguments[0].getBoundingClientRect().left', cell)
            driver.execute_script('arguments[0].scrollLeft = 400', box)
            assert driver.execute_script('return arguments[0].scrollLeft', box) > 0
            after = driver.execute_script('return arguments[0].getBoundingClientRect().left', cell)
            assert abs(after - before) < 1, (before, after)          # sticky: it did not move
            driver.execute_script('arguments[0].scrollLeft = 0', box)
        # a row expands to its context and the commands that rebuild it, with a copy button
        button = table.find_element('css selector', 'tbody tr.main button.expand')
        driver.execute_script('arguments[0].scrollIntoView({block: "center"})', button)
        button.click()
        detail = driver.find_element('id', button.get_attribute('aria-controls'))
        assert detail.is_displayed() and '.venv/bin/knowacq run ' in detail.text and 'knowacq verify' in detail.text
        assert detail.find_element('css selector', 'button.copy').is_displayed()
        assert driver.execute_script('return document.documentElement.scrollWidth') <= width
        button.click()
        driver.execute_script('window.scrollTo(0, 0)')
        _full_page_shot(driver, shots / f'overview-{width}.png', width)
    assert _problems(driver) == []


def test_sort_filter_and_baseline_survive_a_reload(driver, shipped_site):
    from selenium.webdriver.support.ui import Select
    _at_width(driver, 1280)
    driver.get((shipped_site / 'index.html').resolve().as_uri())
    table = driver.find_element('css selector', 'table.lb[data-table]')
    tid = table.get_attribute('data-table')
    Select(driver.find_element('css selector', 'select[data-filter="study"]')).select_by_value('knowacq')
    header = table.find_element('xpath', './/th[.//button[text()="System"]]')
    header.click()
    header.click()                                                  # Z-A
    visible = [r.get_attribute('data-name') for r in table.find_elements('css selector', 'tbody tr.main')
               if r.is_displayed()]
    assert visible and visible == sorted(visible, reverse=True)
    chooser = Select(driver.find_element('css selector', f'select.baseline[data-table="{tid}"]'))
    default = chooser.first_selected_option.get_attribute('value')
    shown = {r.get_attribute('data-sid') for r in table.find_elements('css selector', 'tbody tr.main') if r.is_displayed()}
    other = next(o.get_attribute('value') for o in chooser.options
                 if o.get_attribute('value') != default and o.get_attribute('value') in shown)
    marks_before = [m.text for m in table.find_elements('css selector', 'td .sig')]
    chooser.select_by_value(other)
    marks_after = [m.text for m in table.find_elements('css selector', 'td .sig')]
    assert marks_after != marks_before                              # markers now against the chosen baseline
    base_row = table.find_element('css selector', f'tr.main[data-sid="{other}"]')
    assert base_row.find_element('css selector', '.badge.base').is_displayed()
    url = driver.current_url
    assert 'f.study=knowacq' in url and f's.{tid}=system%3Ad' in url and f'b.{tid}=' in url
    driver.refresh()
    table = driver.find_element('css selector', f'table.lb[data-table="{tid}"]')
    assert Select(driver.find_element('css selector', 'select[data-filter="study"]')).first_selected_option \
        .get_attribute('value') == 'knowacq'
    again = [r.get_attribute('data-name') for r in table.find_elements('css selector', 'tbody tr.main') if r.is_displayed()]
    assert again == visible
    assert table.find_element('xpath', './/th[.//button[text()="System"]]').get_attribute('aria-sort') == 'descending'
    assert Select(driver.find_element('css selector', f'select.baseline[data-table="{tid}"]')) \
        .first_selected_option.get_attribute('value') == other
    assert [m.text for m in table.find_elements('css selector', 'td .sig')] == marks_after
    assert _problems(driver) == []
