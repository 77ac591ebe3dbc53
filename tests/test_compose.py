"""docker-compose.yml and Dockerfile: the production shape, checked without a Docker engine.

No Docker engine runs on the development machines, so nothing here starts a container. When the
`docker compose` plugin is installed, `docker compose config -q` validates the file against the
Compose specification; in any case the file is parsed (PyYAML) and its structure asserted: a
MongoDB replica set whose name agrees everywhere, a one-shot `rs.initiate` step, and the FHIR
server waiting for it, pointed at the set, health-checked on /ready.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from fhir_server.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


def _compose_plugin() -> str | None:
    """Why `docker compose` cannot be used here, or None when it can."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        proc = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker compose version` did not run: {exc}"
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or [""])[0][:120]
        return f"the docker CLI has no compose plugin (`docker compose version`: {first})"
    return None


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed; the structural checks need it "
                                              "(the text-level checks still run)")
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def _command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _mongo_members(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if "mongod" in _command(s)}


def _replset(service: dict) -> str:
    cmd = _command(service)
    assert "--replSet" in cmd, cmd
    return cmd[cmd.index("--replSet") + 1]


def _server(compose: dict) -> tuple[str, dict]:
    found = [(n, s) for n, s in compose["services"].items() if "FHIR_MONGODB_URI" in _environment(s)]
    assert len(found) == 1, "exactly one service should run the FHIR server"
    return found[0]


def _init(compose: dict) -> tuple[str, dict]:
    found = [(n, s) for n, s in compose["services"].items() if "rs.initiate" in " ".join(_command(s))]
    assert len(found) == 1, "exactly one service should initiate the replica set"
    return found[0]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _healthcheck(service: dict) -> str:
    test = (service.get("healthcheck") or {}).get("test")
    assert test, "no healthcheck"
    return " ".join(test) if isinstance(test, list) else test


# ---- with the compose plugin, when there is one --------------------------------------------------

def test_docker_compose_config_accepts_the_file():
    reason = _compose_plugin()
    if reason is not None:
        pytest.skip(f"{reason}; the file is validated structurally by the other tests instead")
    proc = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


# ---- without any parser ----------------------------------------------------------------------------

def test_compose_text_has_the_essentials():
    text = COMPOSE.read_text()
    for needle in ("--replSet", "rs.initiate", "replicaSet=", "/ready", "service_healthy",
                   "service_completed_successfully", "mongo:7"):
        assert needle in text, needle
    assert "\t" not in text, "YAML must not be indented with tabs"
    assert not re.search(r"^version:", text, re.M), "the top-level `version` key is obsolete in Compose v2"


# ---- structure (PyYAML) ------------------------------------------------------------------------------

def test_mongo_replica_set_members(compose):
    members = _mongo_members(compose)
    assert len(members) in (1, 3), f"a replica set of 1 (development) or 3 (production) members, not {len(members)}"
    names = {_replset(s) for s in members.values()}
    assert len(names) == 1, names
    declared_volumes = set(compose.get("volumes") or {})
    for name, service in members.items():
        assert re.fullmatch(r"mongo:7(\.\d+)*", service["image"]), service["image"]
        assert "--bind_ip_all" in _command(service), f"{name} must listen beyond localhost"
        assert "mongosh" in _healthcheck(service) and "ping" in _healthcheck(service)
        assert service.get("restart") in ("always", "unless-stopped")
        data = [v for v in service.get("volumes", []) if str(v).split(":")[1:2] == ["/data/db"]]
        assert len(data) == 1, f"{name} keeps /data/db on a volume"
        assert data[0].split(":")[0] in declared_volumes, f"{name}: /data/db is on a named, declared volume"
        assert "ports" not in service, f"{name}: MongoDB (no authentication) must not be published on the host"
    data_volumes = [v.split(":")[0] for s in members.values() for v in s["volumes"] if ":/data/db" in v]
    assert len(set(data_volumes)) == len(members), "each member has its own data volume"


def test_init_step_initiates_the_same_replica_set(compose):
    members = _mongo_members(compose)
    set_name = _replset(next(iter(members.values())))
    name, init = _init(compose)
    script = " ".join(_command(init))
    assert re.search(r"_id:\s*[\"']%s[\"']" % re.escape(set_name), script), "rs.initiate uses the --replSet name"
    hosts = set(re.findall(r"host:\s*[\"']([\w.-]+):27017[\"']", script))
    assert hosts == set(members), (hosts, set(members))
    assert "NotYetInitialized" in script, "the init step must be idempotent (a rerun finds the set initiated)"
    assert "PRIMARY" in script, "the init step waits for an elected primary"
    assert init.get("restart") in (None, "no"), "a one-shot step must not restart in a loop"
    depends = init.get("depends_on") or {}
    assert set(depends) == set(members)
    assert all(d.get("condition") == "service_healthy" for d in depends.values()), depends


def test_fhir_server_uses_the_replica_set_and_waits_for_it(compose):
    members = _mongo_members(compose)
    set_name = _replset(next(iter(members.values())))
    init_name, _ = _init(compose)
    name, server = _server(compose)
    env = _environment(server)
    uri = urlsplit(env["FHIR_MONGODB_URI"])
    assert uri.scheme == "mongodb"
    assert parse_qs(uri.query).get("replicaSet") == [set_name]
    seeds = {h.split(":")[0] for h in uri.netloc.rsplit("@", 1)[-1].split(",")}
    assert seeds == set(members), "the seed list names every member"
    assert server["depends_on"][init_name]["condition"] == "service_completed_successfully"
    for key in env:  # no typo'd settings: every FHIR_ variable is one the server reads
        assert key.startswith("FHIR_") and key[5:].lower() in Settings.model_fields, key
    build = server["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
    assert dockerfile.resolve() == DOCKERFILE.resolve()
    command = _command(server) or _dockerfile_cmd()
    assert command[:2] == ["fhir-server", "serve"] and "0.0.0.0" in command and "--workers" in command
    check = _healthcheck(server)
    assert "/ready" in check and ":8080" in check
    published = [str(p) for p in server.get("ports", [])]
    assert published and all(p.endswith(":8080") for p in published)
    assert all(p.startswith("127.0.0.1:") for p in published), \
        "the server has no authentication yet: publish it on loopback only"


def test_compose_services_and_volumes_are_consistent(compose):
    services = compose["services"]
    for name, service in services.items():
        for dep in service.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
        assert "image" in service or "build" in service, name
    used = {str(v).split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert used == set(compose.get("volumes") or {}), "every named volume is declared and used"


# ---- Dockerfile ------------------------------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _dockerfile_cmd() -> list[str]:
    import json

    cmds = [rest for word, rest in _dockerfile_instructions() if word == "CMD"]
    assert cmds, "Dockerfile has no CMD"
    return json.loads(cmds[-1])


def test_dockerfile_builds_and_serves_the_package():
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " && ".join(rest for word, rest in instructions if word == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|$)", runs), "pip install . (the package itself)"
    for word, rest in instructions:
        if word == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                if not any(ch in src for ch in "*?["):  # wildcards may match nothing; plain paths must exist
                    assert (ROOT / src).exists(), f"COPY source {src} is missing from the build context"
    copied = " ".join(rest for word, rest in instructions if word == "COPY")
    assert "pyproject.toml" in copied and "fhir_server" in copied
    cmd = _dockerfile_cmd()
    assert cmd == ["fhir-server", "serve", "--host", "0.0.0.0", "--workers", "2"]
    assert any(word == "USER" and rest not in ("root", "0") for word, rest in instructions), "run unprivileged"
    health = " ".join(rest for word, rest in instructions if word == "HEALTHCHECK")
    assert "/ready" in health
