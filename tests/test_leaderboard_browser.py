"""The leaderboard in a real browser: headless Chromium (Debian's chromium + chromium-driver) via selenium.

Builds a site from real result folders (one whose system names are script-injection attempts), opens it from
file://, and checks: no console errors, sorting reorders rows, a system link opens its per-query page, and none of
the injected markup executes or even becomes an element. A screenshot of each page is saved in the test's tmp dir.
"""
from __future__ import annotations

import shutil
import time

import pytest

from test_leaderboard import XSS_NAMES, write_results_folder  # noqa: F401  (the real-results fixture builder)

from pyterrier_knowacq.leaderboard import build_site

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
    return [r.get_attribute('data-name') for r in table.find_elements('css selector', 'tbody tr')]


def test_site_in_headless_chromium(driver, tmp_path):
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

    shot = tmp_path / 'leaderboard-overview.png'
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
    visible = [r for r in table.find_elements('css selector', 'tbody tr') if r.is_displayed()]
    assert len(visible) == 2 and len(before) == 6
    Select(driver.find_element('css selector', 'select[data-filter="first_stage"]')).select_by_value('')
    assert len([r for r in table.find_elements('css selector', 'tbody tr') if r.is_displayed()]) == 6
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
    shot = tmp_path / 'leaderboard-system.png'
    driver.save_screenshot(str(shot))
    print(f'screenshot: {shot}')
    driver.execute_script('window.scrollTo(0, document.querySelector("figure.chart").offsetTop - 20)')
    shot = tmp_path / 'leaderboard-system-chart.png'
    driver.save_screenshot(str(shot))
    print(f'screenshot: {shot}')
    assert _problems(driver) == []

    # the study page with claims and plots renders and runs nothing injected
    study = next(p for p in (index.parent / 'studies').glob('spine-*.html'))
    driver.get(study.resolve().as_uri())
    assert driver.find_elements('css selector', 'table.claims tbody tr')
    assert all(img.get_attribute('naturalWidth') != '0' for img in driver.find_elements('css selector', '.plots img'))
    shot = tmp_path / 'leaderboard-study.png'
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
    driver.get(index.resolve().as_uri())
    tables = driver.find_elements('css selector', 'table.lb[data-table]')
    assert len(tables) == 2  # dl19 and dl20
    names = [a.text for a in tables[0].find_elements('css selector', 'a.syslink')]
    assert set(names) == {'BM25', 'PISA BM25 (31k slice)', 'BM25 >> MiniLM bi-encoder'}
    shot = tmp_path / 'quickstart-overview.png'
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
    shot = tmp_path / 'quickstart-system.png'
    driver.save_screenshot(str(shot))
    print(f'screenshot: {shot}')
    assert _problems(driver) == []
