"""A browser SMART app on another origin: SMART's own JavaScript client (npm `fhirclient`, its
browser bundle installed by `make setup`) runs a standalone launch in headless Chromium from
http://127.0.0.1:8098 against the server, which allows that origin (FHIR_CORS_ORIGINS): discovery,
the token request and the FHIR read are all cross-origin. The same app served from an origin the
server does not list is stopped by the browser at its first request.

The app's pages come from a small HTTP server of the test's own on another loopback port (a page
answered by Playwright's interception would not count as a loopback origin, and Chromium's local
network access rules would then refuse every request to the server, for the wrong reason).
"""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.auth_helpers import PASSWORD, add_client, add_user, backend_token, fhir_client, public_jwks, rsa_key
from tests.conftest import start_server, stop_server
from tests.helpers import new_ins

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / ".tools" / "fhirclient" / "2.6.3" / "fhir-client.js"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium package is not installed (apt-get install chromium)")
    if not BUNDLE.exists():
        pytest.skip("fhirclient is not installed (make setup; needs npm)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


class _AppServer:
    """Serves the app's pages (filled in once the FHIR server's address is known)."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[str, str]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                content_type, body = outer.pages.get(self.path.split("?", 1)[0], ("text/plain", "not found"))
                data = body.encode()
                self.send_response(200 if content_type != "text/plain" else 404)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def apps():
    allowed, other = _AppServer(), _AppServer()
    yield allowed, other
    allowed.close()
    other.close()


@pytest.fixture(scope="module")
def cors_server(ferretdb_uri, apps):
    allowed, other = apps
    s = start_server(ferretdb_uri, {"FHIR_INSECURE_DEV_MODE": "false", "FHIR_CORS_ORIGINS": allowed.origin})
    try:
        key = rsa_key()
        add_client(s, "op", "confidential-asymmetric", "system/*.cruds", redirect_uris=(), jwks=public_jwks(key),
                   operator=True)
        with fhir_client(s, backend_token(s, "op", key, "system/*.cruds")["access_token"]) as op:
            pid = op.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Navigateur"}],
                                            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10",
                                                            "value": new_ins()}]},
                          headers={"Content-Type": "application/fhir+json"}).json()["id"]
        add_user(s, "web", "patient", f"Patient/{pid}")
        for app in (allowed, other):
            add_client(s, f"web-app-{app.origin[-5:]}", "public", "openid fhirUser launch/patient patient/*.rs",
                       redirect_uris=(f"{app.origin}/app.html",))
            app.pages = _pages(s, app.origin)
        yield s, pid
    finally:
        stop_server(s)


def _pages(server, origin: str) -> dict[str, tuple[str, str]]:
    client_id = f"web-app-{origin[-5:]}"
    launch = f"""<!doctype html><title>launching</title><script src="/fhir-client.js"></script><script>
FHIR.oauth2.authorize({{iss: "{server.fhir_base}", clientId: "{client_id}",
  scope: "openid fhirUser launch/patient patient/*.rs", redirectUri: "{origin}/app.html"}})
  .catch(e => {{ document.title = "error " + e.message; }});
</script>"""
    app = """<!doctype html><title>waiting</title><script src="/fhir-client.js"></script><script>
FHIR.oauth2.ready()
  .then(client => client.request("Patient/" + client.patient.id))
  .then(p => { document.title = "read " + p.id + " " + p.name[0].family; })
  .catch(e => { document.title = "error " + e.message; });
</script>"""
    return {"/launch.html": ("text/html", launch), "/app.html": ("text/html", app),
            "/fhir-client.js": ("application/javascript", BUNDLE.read_text())}


def _run(browser, server, origin: str, *, signs_in: bool) -> str:
    page = browser.new_page()
    page.set_default_timeout(90_000)
    expect = pytest.importorskip("playwright.sync_api").expect
    page.goto(origin + "/launch.html")
    if signs_in:
        expect(page).to_have_title("Sign in")
        page.get_by_label("User name").fill("web")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_title("Allow access?")
        page.get_by_role("button", name="Allow").click()
    page.wait_for_function("document.title.startsWith('read') || document.title.startsWith('error')")
    title = page.title()
    page.close()
    return title


def test_fhirclient_from_an_allowed_origin_launches_and_reads(browser, cors_server, apps):
    server, pid = cors_server
    assert _run(browser, server, apps[0].origin, signs_in=True) == f"read {pid} Navigateur"


def test_an_origin_not_listed_is_stopped_by_the_browser(browser, cors_server, apps):
    server, _ = cors_server
    assert _run(browser, server, apps[1].origin, signs_in=False).startswith("error")  # discovery is blocked
