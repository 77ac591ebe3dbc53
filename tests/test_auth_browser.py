"""The sign-in and approval pages in a real browser: headless Chromium (Debian's package) driven by
Playwright. A person signs in, approves the app and lands on its redirect URI with a code."""

from __future__ import annotations

import shutil
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.auth_helpers import PASSWORD, add_client, authorize_params, exchange, pkce

# The app's redirect URI (Chromium refuses the test helpers' port 9 as unsafe); the test answers it.
APP_CALLBACK = "http://127.0.0.1:8099/callback"

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium package is not installed (apt-get install chromium chromium-driver)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_sign_in_approve_and_land_on_the_redirect_with_a_code(auth_world, browser):
    w = auth_world
    add_client(w.server, "browser-app", "public", "openid fhirUser launch/patient patient/*.rs",
               redirect_uris=(APP_CALLBACK,), name="Mon Dossier")
    verifier, challenge = pkce()
    url = w.server.base + "/auth/authorize?" + urlencode(
        authorize_params(w.server, "browser-app", "openid fhirUser launch/patient patient/*.rs", challenge,
                         state="xyz", redirect_uri=APP_CALLBACK))
    page = browser.new_page()
    page.set_default_timeout(90_000)  # the machine may be loaded; assertions below wait for the page
    landed = []

    def callback(route):  # the app's redirect URI: record it and show a page
        landed.append(route.request.url)
        route.fulfill(status=200, content_type="text/html", body="<title>App</title><p>back in the app</p>")

    page.route(lambda url: url.startswith(APP_CALLBACK), callback)
    page.goto(url)
    assert page.title() == "Sign in"
    page.get_by_label("User name").fill("helene")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Sign in").click()
    expect = pytest.importorskip("playwright.sync_api").expect
    expect(page.get_by_role("alert")).to_contain_text("incorrect", timeout=90_000)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_title("Allow access?", timeout=90_000)
    assert "Mon Dossier" in page.content()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(lambda url: url.startswith(APP_CALLBACK))
    assert landed and page.title() == "App", page.url
    q = {k: v[0] for k, v in parse_qs(urlsplit(landed[0]).query).items()}
    assert q["state"] == "xyz" and q["code"]
    r = exchange(w.server, "browser-app", q["code"], verifier, redirect_uri=APP_CALLBACK)
    assert r.status_code == 200 and r.json()["patient"] == w.p1
    page.close()
