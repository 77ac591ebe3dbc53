"""A real HTTP server running in the test process, for tests that inject policies or hooks into the
app (`create_app(settings, policies=…, hooks=…)`) or watch its database commands with a PyMongo
CommandListener. uvicorn serves on a socket bound and listening before it starts, so the first
request waits in the kernel backlog until the app is ready: no polling, no sleeps."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from dataclasses import dataclass, field

import httpx
import uvicorn

from fhir_server.config import Settings
from fhir_server.rest.app import create_app
from tests.conftest import TEST_INLINE_MAX, TEST_MAX_BODY, TEST_MAX_RESOURCE


@dataclass
class InProcessServer:
    mongodb_uri: str
    policies: tuple = ()
    hooks: tuple = ()
    insecure: bool = False
    database: str = field(default_factory=lambda: "t_" + uuid.uuid4().hex[:12])
    settings: dict = field(default_factory=dict)  # further Settings fields
    base: str = ""
    _server: uvicorn.Server | None = None
    app: object = None
    _thread: threading.Thread | None = None

    @property
    def fhir_base(self) -> str:
        return self.base + "/fhir"

    def client(self, **kwargs) -> httpx.Client:
        kwargs.setdefault("timeout", 60)
        return httpx.Client(base_url=self.fhir_base, headers={"Accept": "application/fhir+json"}, **kwargs)

    def __enter__(self) -> InProcessServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(256)
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        settings = Settings(mongodb_uri=self.mongodb_uri, database=self.database, insecure_dev_mode=self.insecure,
                            binary_inline_max_bytes=TEST_INLINE_MAX, max_body_bytes=TEST_MAX_BODY,
                            max_resource_bytes=TEST_MAX_RESOURCE,
                            log_level="WARNING", _env_file=None, **self.settings)
        app = create_app(settings, policies=self.policies, hooks=self.hooks)
        self.app = app
        self._server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._server.serve(sockets=[sock])), daemon=True)
        self._thread.start()
        with httpx.Client(timeout=60) as c:
            assert c.get(self.base + "/ready").status_code == 200
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(30)
