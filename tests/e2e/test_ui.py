"""The web page at /ui in a real browser (Debian's headless Chromium through chromedriver): with
token auth on, after indexing shape pictures and captions with `python -m clip_server.index`, it
asks for the token, says so when one is wrong, then searches by text and by image, ranks labels and
encodes, showing what the server found, with no error in the browser's console. A Flow without an
index shows rank and encode but no search. With CLIP_SERVER_SCREENSHOT=PATH, the page as the test
left it is saved there (docs/img/ui.png was made so)."""

import os
import shutil

import pytest
import requests
from PIL import Image
from search_servers import CAPTIONS, TOKEN, index_command, make_files, serve
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

# Headless, and nothing of Chromium's own traffic: no updates, sync, field trials or QUIC probes.
CHROMIUM_FLAGS = (
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--window-size=1200,1080',
)
WAIT = 60  # seconds for the page to show an answer (the tiny model answers in milliseconds)


@pytest.fixture(scope='module')
def browser(tmp_path_factory):
    chromium, driver_path = shutil.which('chromium'), shutil.which('chromedriver')
    if not (chromium and driver_path):
        pytest.fail('the browser test needs Chromium and its driver: apt-get install -y chromium chromium-driver')
    options = Options()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f'--user-data-dir={tmp_path_factory.mktemp("chromium-profile")}'):
        options.add_argument(flag)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    yield driver
    driver.quit()


@pytest.fixture(scope='module')
def indexed(tiny_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp('ui')
    server = serve(tiny_weights, folder)
    files = make_files(folder)
    answer = index_command(str(files), '--server', f'grpc://127.0.0.1:{server.grpc}')
    assert answer.returncode == 0, answer.stderr
    yield server, files
    server.stop()


def wait_for(driver, condition, what: str):
    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(lambda _: condition(), message=what)


def shown(driver, element_id: str) -> bool:
    return driver.find_element(By.ID, element_id).is_displayed()


def text(driver, selector: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, selector).text


def console_errors(driver) -> list[dict]:
    """The browser console's errors since the last call (reading the log empties it)."""
    return [entry for entry in driver.get_log('browser') if entry['level'] == 'SEVERE']


def test_the_page_with_auth_searches_ranks_and_encodes(browser, indexed):
    server, files = indexed
    browser.get(f'http://127.0.0.1:{server.http}/ui')
    wait_for(browser, lambda: shown(browser, 'auth'), 'the token form')
    assert 'asks for a token' in text(browser, '#auth-message') and not shown(browser, 'tools')

    browser.find_element(By.ID, 'token').send_keys('not-the-token\n')
    wait_for(browser, lambda: 'refused this token' in text(browser, '#auth-message'), 'the wrong-token message')
    token_field = browser.find_element(By.ID, 'token')
    token_field.clear()
    token_field.send_keys(f'{TOKEN}\n')
    wait_for(browser, lambda: shown(browser, 'tools'), 'the tools after the right token')
    assert browser.execute_script('return sessionStorage.getItem("clip_server_token")') == TOKEN
    assert text(browser, '#model') == 'tiny-vit · 32-d embeddings'
    assert text(browser, '#search-count') == '6 documents in the index'
    refusals = console_errors(browser)  # the browser logs each 401 answer as a failed load: nothing else
    assert refusals and all(entry['source'] == 'network' and '401' in entry['message'] for entry in refusals)

    browser.find_element(By.ID, 'search-text').send_keys(f'{CAPTIONS[1]}\n')
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, '#results .card'), 'text search results')
    first = browser.find_element(By.CSS_SELECTOR, '#results .card')
    assert first.find_element(By.CLASS_NAME, 'text').text == CAPTIONS[1]
    assert first.find_element(By.CLASS_NAME, 'score').text == '1.000'
    assert len(browser.find_elements(By.CSS_SELECTOR, '#results .card')) == 6

    square = files / 'blue-square.png'
    browser.find_element(By.ID, 'search-file').send_keys(str(square))
    first_image = '#results .card:first-child img'
    wait_for(browser, lambda: browser.find_elements(By.CSS_SELECTOR, first_image), 'image search results')
    thumbnail = browser.find_element(By.CSS_SELECTOR, first_image)
    assert thumbnail.get_attribute('alt') == str(square)
    assert thumbnail.get_attribute('src').startswith('data:image/jpeg;base64,')
    assert browser.execute_script('return arguments[0].naturalWidth', thumbnail) == 96  # the preview, as stored
    assert text(browser, '#results .card:first-child .score') == '1.000'
    assert len(browser.find_elements(By.CSS_SELECTOR, '#results img')) == 3  # every picture has its preview

    labels = browser.find_element(By.ID, 'rank-labels')
    labels.clear()
    labels.send_keys(f'a photo of a cat\n{CAPTIONS[0]}\na drawing of a house')
    browser.find_element(By.ID, 'rank-text').send_keys(f'{CAPTIONS[0]}\n')
    wait_for(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, '#bars li')) == 3, 'three ranked labels')
    assert text(browser, '#bars li:first-child .label') == CAPTIONS[0]
    shares = [float(bar.text.rstrip('%')) for bar in browser.find_elements(By.CSS_SELECTOR, '#bars .score')]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(100, abs=0.2)

    browser.find_element(By.ID, 'encode-text').send_keys('a red apple\n')
    wait_for(browser, lambda: text(browser, '#vector'), 'the encoded vector')
    assert text(browser, '#vector').startswith('tiny-vit: 32 dimensions, norm ')
    assert 'ms on the server' in text(browser, '#encode .took')
    assert console_errors(browser) == []
    _screenshot(browser)

    broken = files / 'broken.png'
    broken.write_bytes(b'these bytes are no picture')
    browser.find_element(By.ID, 'encode-file').send_keys(str(broken))
    error = '#encode .error'
    wait_for(browser, lambda: browser.find_element(By.CSS_SELECTOR, error).is_displayed(), 'the error message')
    assert text(browser, error).startswith('document query: cannot decode image (26 bytes): not one of')
    assert '{' not in text(browser, error) and 'Traceback' not in browser.page_source
    assert [entry['source'] for entry in console_errors(browser)] == ['network']  # the 400 answer's failed load


def test_a_flow_without_an_index_shows_rank_and_encode_but_no_search(browser, tiny_weights, tmp_path):
    server = serve(tiny_weights, tmp_path, index=False, token=None)
    try:
        browser.execute_script('sessionStorage.clear()')
        browser.get(f'http://127.0.0.1:{server.http}/ui')
        wait_for(browser, lambda: shown(browser, 'tools'), 'the tools')
        assert not shown(browser, 'search') and not shown(browser, 'auth')
        assert shown(browser, 'rank') and shown(browser, 'encode')
        browser.find_element(By.ID, 'rank-file').send_keys(str(make_files(tmp_path) / 'red-circle.png'))
        wait_for(browser, lambda: len(browser.find_elements(By.CSS_SELECTOR, '#bars li')) == 3, 'ranked labels')
        assert console_errors(browser) == []
    finally:
        server.stop()


@pytest.mark.parametrize(
    ('path', 'body', 'status', 'detail'),
    [
        ('search', b'{"text": ', 400, 'the request body is not valid JSON'),
        ('search', b'["a list"]', 400, 'the request body must be a JSON object'),
        ('search', b'{"text": "a", "image": "data:image/png;base64,AA=="}', 400, 'send either text or image'),
        ('search', b'{"image": "/etc/passwd"}', 400, 'image must be the picture itself as a data:image/... URI'),
        ('search', b'{"text": "a", "limit": 101}', 400, 'limit must be a whole number from 1 to 100'),
        ('rank', b'{"text": "a", "labels": "one label"}', 400, 'labels must be a list of texts'),
        ('rank', b'{"text": "a", "labels": ["  ", ""]}', 400, 'give at least one label to rank'),
        ('rank', b'{"text": "a", "labels": [' + b'"x",' * 100 + b'"y"]}', 413, '101 labels, over the 100'),
    ],
)
def test_the_page_routes_refuse_bad_requests_in_a_sentence(indexed, path, body, status, detail):
    server = indexed[0]
    url = f'http://127.0.0.1:{server.http}/ui/api/{path}'
    answer = requests.post(url, data=body, headers={'Authorization': TOKEN}, timeout=30)
    assert answer.status_code == status and answer.json()['detail'].startswith(detail), answer.text
    refused = requests.post(url, data=body, timeout=30)
    assert refused.status_code == 401 and refused.json() == {'detail': 'missing or wrong authorization token'}
    page = requests.get(f'http://127.0.0.1:{server.http}/ui', timeout=30)  # the page itself needs no token
    assert page.status_code == 200 and page.headers['content-security-policy'].startswith("default-src 'self';")


def _screenshot(browser) -> None:
    """The page as it stands, to CLIP_SERVER_SCREENSHOT when set, in 64 colours (a small PNG)."""
    target = os.environ.get('CLIP_SERVER_SCREENSHOT')
    if target:
        browser.save_screenshot(target)
        Image.open(target).convert('RGB').quantize(64).save(target, optimize=True)
