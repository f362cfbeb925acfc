"""compose.yaml, the Dockerfile and .dockerignore, checked without a Docker engine.

compose.yaml is validated against the Compose specification's JSON schema (tests/data/compose-spec/, a copy
of compose-spec/compose-spec's schema under its Apache-2.0 licence), both as written and after Compose's
variable interpolation, and then held to the deployment rules: closed by default (a Redis password, an
API token and Flower's credentials required, each secret only where it is needed and never on a command
line), exactly one beat, Redis with AOF and noeviction. The healthcheck commands themselves run against real processes
in tests/integration/test_ops.py.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.compose import InterpolationError, interpolate
from tests.support.lessons import REPO

COMPOSE = REPO / "compose.yaml"
SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"
APP_SERVICES = {"api", "worker", "worker-local", "beat", "flower"}


# --- Compose's interpolation: tests/support/compose.py ------------------------------------------------------


def load() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


SECRETS = {"FLOWER_BASIC_AUTH": "admin:secret", "REDIS_PASSWORD": "0123abcd", "LESSON_API_TOKEN": "tok3n"}


def resolved(**env: str) -> dict[str, Any]:
    return interpolate(load(), {**SECRETS, **env})


def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"].rstrip("#").endswith("draft-07/schema")
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def errors(document: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator().iter_errors(document)]


def command(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def flower_services(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, service in doc["services"].items():
        argv = command(service) + list(service.get("entrypoint") or [])
        if "flower" in argv or name == "flower" or "flower" in str(service.get("image", "")):
            yield name, service


# --- the schema ---------------------------------------------------------------------------------------------


def test_schema_copy_carries_its_licence() -> None:
    assert (SCHEMA.parent / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert json.loads(SCHEMA.read_text())["$id"] == "compose_spec.json"


def test_compose_file_is_valid_as_written() -> None:
    assert errors(load()) == []


def test_compose_file_is_valid_after_interpolation() -> None:
    assert errors(resolved()) == []
    example = REPO / "config" / "lessonctl.env.example"
    defaults = dict(re.findall(r"^# ?(\w+)=(\S+)$", example.read_text(), re.M))
    assert errors(resolved(**defaults)) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("services", "api", "restart_policy"), "always"),  # not a Compose key
        (("services", "redis", "healthcheck", "test"), 5),
        (("services", "worker", "volumes"), "kubeconfig:/etc/kubeconfig"),
        (("services", "beat", "deploy", "replica"), 1),
        (("volumes", "redis-data", "driverr"), "local"),
    ],
)
def test_schema_catches_mistakes(path: tuple[str, ...], value: object) -> None:
    """The validation bites: each of these typical mistakes is reported."""
    doc = copy.deepcopy(load())
    node = doc
    for key in path[:-1]:
        if node.get(key) is None:
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    assert errors(doc) != []


# --- deployment rules ---------------------------------------------------------------------------------------


def test_services_are_all_there() -> None:
    services = load()["services"]
    assert {"redis", "api", "worker", "worker-local", "beat", "flower"} <= set(services)


def test_flower_has_basic_auth_from_the_environment() -> None:
    doc = load()
    found = dict(flower_services(doc))
    assert set(found) == {"flower"}
    for name, service in found.items():
        argv = command(service)
        # Flower reads FLOWER_BASIC_AUTH from its environment: never on the command line, never a default
        assert not [a for a in argv if "basic" in a], (name, argv)
        assert environment(service)["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?"), name
        assert "FLOWER_UNAUTHENTICATED_API" not in environment(service)
    assert "FLOWER_UNAUTHENTICATED_API" not in COMPOSE.read_text()
    assert not re.search(r"^FLOWER_UNAUTHENTICATED_API", (REPO / "config" / "lessonctl.env.example").read_text(), re.M)


@pytest.mark.parametrize("secret", sorted(SECRETS))
@pytest.mark.parametrize("value", [None, ""])
def test_compose_cannot_start_without_each_secret(secret: str, value: str | None) -> None:
    env = {k: v for k, v in SECRETS.items() if k != secret}
    if value is not None:
        env[secret] = value
    with pytest.raises(InterpolationError, match=secret):
        interpolate(load(), env)


def test_secrets_reach_only_the_services_that_need_them_and_no_command_line() -> None:
    doc = resolved()
    needs = {"FLOWER_BASIC_AUTH": {"flower"}, "LESSON_API_TOKEN": {"api"}}
    for name, service in doc["services"].items():
        argv = " ".join(command(service))
        env = environment(service)
        for secret, value in SECRETS.items():
            assert value not in argv, f"{secret} on the command line of {name}"
            holders = {k for k, v in env.items() if value in v}
            if secret in needs and name not in needs[secret]:
                assert not holders, f"{name} receives {secret} ({holders})"
        # no application container reads .env (which holds the secrets) as an env_file
        files = [f["path"] if isinstance(f, dict) else f for f in service.get("env_file", [])]
        assert ".env" not in files, name
    assert environment(doc["services"]["flower"])["FLOWER_BASIC_AUTH"] == SECRETS["FLOWER_BASIC_AUTH"]
    assert environment(doc["services"]["api"])["LESSON_API_TOKEN"] == SECRETS["LESSON_API_TOKEN"]


def test_redis_requires_its_password_and_every_url_carries_it() -> None:
    doc = resolved()
    redis = doc["services"]["redis"]
    argv = command(redis)
    include = argv[argv.index("--include") + 1]
    (mount,) = [c for c in redis["configs"] if c["target"] == include]
    assert doc["configs"][mount["source"]]["content"].strip() == f"requirepass {SECRETS['REDIS_PASSWORD']}"
    assert environment(redis)["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]  # the healthcheck's redis-cli
    for name in APP_SERVICES:
        url = environment(doc["services"][name])["LESSON_REDIS_URL"]
        assert url == f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0", name


def test_no_service_exposes_flower_without_basic_auth() -> None:
    doc = resolved()
    for name, service in doc["services"].items():
        published = " ".join(str(p) for p in service.get("ports", []))
        if "5555" in published or name in dict(flower_services(doc)):
            assert ":" in environment(service).get("FLOWER_BASIC_AUTH", ""), name


def test_exactly_one_beat() -> None:
    doc = load()
    beats = [name for name, s in doc["services"].items() if "beat" in command(s)]
    assert beats == ["beat"]
    for name, service in doc["services"].items():
        argv = command(service)
        assert "-B" not in argv and "--beat" not in argv, f"{name} embeds a second beat in a worker"
    beat = doc["services"]["beat"]
    assert beat.get("deploy", {}).get("replicas", 1) <= 1
    assert beat.get("scale", 1) <= 1
    assert "profiles" not in beat
    # a fixed container name: `docker compose up --scale beat=2` fails instead of doubling the schedule
    assert beat.get("container_name")


def test_redis_keeps_its_data_and_never_evicts() -> None:
    redis = load()["services"]["redis"]
    argv = command(redis)
    assert argv[0] == "redis-server"
    options = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert options["--include"]  # the password file (test_redis_requires_its_password...)
    assert options["--appendonly"] == "yes"
    assert options["--maxmemory-policy"] == "noeviction"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["restart"] in {"always", "unless-stopped"}
    assert "ports" not in redis  # reachable by the services only


def test_application_services_share_image_env_file_restart_and_healthchecks() -> None:
    services = resolved()["services"]
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        service = services[name]
        assert service["env_file"] == [{"path": "lesson.env", "required": False}], name
        assert service["restart"] in {"always", "unless-stopped", "on-failure"}, name
        assert service["healthcheck"]["test"][0] in {"CMD", "CMD-SHELL"}, name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert environment(service)["LESSON_REDIS_URL"].endswith("@redis:6379/0"), name
    assert services["redis"]["healthcheck"]


def test_api_serves_on_all_interfaces_of_its_container() -> None:
    api = load()["services"]["api"]
    assert command(api) == ["lessonctl", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert resolved()["services"]["api"]["ports"] == ["127.0.0.1:8000:8000"]


def test_default_worker_uses_kubernetes_with_a_read_only_kubeconfig() -> None:
    worker = resolved()["services"]["worker"]
    assert "profiles" not in worker
    assert command(worker)[:4] == ["celery", "-A", "workers.app", "worker"]
    env = environment(worker)
    assert env["LESSON_BACKEND"] == "kubernetes"
    mounts = [v for v in worker["volumes"] if isinstance(v, dict) and v["target"] == env["LESSON_KUBECONFIG"]]
    assert len(mounts) == 1 and mounts[0]["read_only"] is True and mounts[0]["type"] == "bind"
    assert mounts[0]["bind"]["create_host_path"] is False  # a missing file is an error, not an empty dir
    assert not worker.get("privileged")


def test_local_worker_is_privileged_under_the_local_profile() -> None:
    worker = resolved()["services"]["worker-local"]
    assert worker["profiles"] == ["local"]
    assert worker["privileged"] is True and worker["user"] == "root"
    assert environment(worker)["LESSON_BACKEND"] == "local"
    targets = {v["target"]: v for v in worker["volumes"]}
    assert targets["/run/netns"]["source"] == "/run/netns"
    assert environment(worker)["LESSON_STATE_DIR"] in targets
    assert command(worker)[:4] == ["celery", "-A", "workers.app", "worker"]


# --- the `sentinel` profile ---------------------------------------------------------------------------------

DATA_NODES = ("redis-1", "redis-2", "redis-3")
SENTINELS = ("redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3")
SENTINEL_ADDRESSES = ",".join(f"{name}:26379" for name in SENTINELS)


def options(argv: list[str]) -> dict[str, list[str]]:
    """``redis-server --opt a b --other c`` as {"--opt": ["a", "b"], "--other": ["c"]}."""
    parsed: dict[str, list[str]] = {}
    current = ""
    for arg in argv[1:]:
        if arg.startswith("--"):
            current = arg
            parsed[current] = []
        else:
            parsed[current].append(arg)
    return parsed


def config_lines(doc: dict[str, Any], service: dict[str, Any], target: str) -> list[str]:
    (mount,) = [c for c in service["configs"] if c["target"] == target]
    return [line.strip() for line in doc["configs"][mount["source"]]["content"].splitlines() if line.strip()]


def test_sentinel_profile_holds_a_primary_two_replicas_and_three_sentinels() -> None:
    doc = resolved()
    profiled = {name for name, s in doc["services"].items() if s.get("profiles") == ["sentinel"]}
    assert profiled == set(DATA_NODES) | set(SENTINELS)
    primary, *replicas = (options(command(doc["services"][name])) for name in DATA_NODES)
    assert "--replicaof" not in primary
    assert [r["--replicaof"] for r in replicas] == [["redis-1", "6379"]] * 2
    for name in DATA_NODES + SENTINELS:
        assert doc["services"][name]["image"] == doc["services"]["redis"]["image"], name


def test_sentinel_data_nodes_keep_their_data_never_evict_and_announce_their_names() -> None:
    doc = resolved()
    for name in DATA_NODES:
        node = doc["services"][name]
        argv = command(node)
        assert argv[0] == "redis-server"
        opts = options(argv)
        assert opts["--appendonly"] == ["yes"] and opts["--appendfsync"] == ["everysec"], name
        assert opts["--maxmemory-policy"] == ["noeviction"], name
        # Sentinel and the other nodes know it by its service name, which survives a container restart
        assert opts["--replica-announce-ip"] == [name]
        # any node may be the primary after a failover: each requires the password and replicates with it
        (include,) = opts["--include"]
        assert config_lines(doc, node, include) == [f"requirepass {SECRETS['REDIS_PASSWORD']}",
                                                    f"masterauth {SECRETS['REDIS_PASSWORD']}"]  # fmt: skip
        assert [v for v in node["volumes"] if v.endswith(":/data")] == [f"{name}-data:/data"]
        assert node["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]
        assert environment(node)["REDISCLI_AUTH"] == SECRETS["REDIS_PASSWORD"]
        assert node["restart"] == "unless-stopped" and "ports" not in node


def test_sentinels_monitor_the_primary_with_a_quorum_of_two_and_the_one_password() -> None:
    doc = resolved()
    password = SECRETS["REDIS_PASSWORD"]
    volumes = set()
    for name in SENTINELS:
        sentinel = doc["services"][name]
        lines = config_lines(doc, sentinel, "/usr/local/etc/redis/sentinel.conf")
        # what scheduler/dev/redis_sentinel.py writes, with Compose's service names for addresses
        assert "sentinel monitor lessons redis-1 6379 2" in lines
        assert f"requirepass {password}" in lines
        assert f"sentinel auth-pass lessons {password}" in lines
        assert f"sentinel sentinel-pass {password}" in lines
        assert {"sentinel resolve-hostnames yes", "sentinel announce-hostnames yes", "port 26379"} <= set(lines)
        assert lines.index("sentinel resolve-hostnames yes") < lines.index("sentinel monitor lessons redis-1 6379 2")
        assert environment(sentinel)["SENTINEL_ANNOUNCE_HOSTNAME"] == name
        assert sentinel["healthcheck"]["test"][0] == "CMD-SHELL"
        assert "ckquorum lessons" in sentinel["healthcheck"]["test"][1]
        assert "ports" not in sentinel and sentinel["restart"] == "unless-stopped"
        (data,) = sentinel["volumes"]
        volumes.add(data)
    assert volumes == {f"{name}:/data" for name in SENTINELS}  # each rewrites its own config
    # a master name of one's own reaches the sentinels and every process alike
    renamed = resolved(LESSON_REDIS_MASTER="school")
    lines = config_lines(renamed, renamed["services"]["redis-sentinel-1"], "/usr/local/etc/redis/sentinel.conf")
    assert "sentinel monitor school redis-1 6379 2" in lines
    assert environment(renamed["services"]["api"])["LESSON_REDIS_MASTER"] == "school"


def test_no_password_in_any_argv() -> None:
    doc = resolved()
    for name, service in doc["services"].items():
        entrypoint = service.get("entrypoint") or []
        argv = command(service) + (shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint))
        assert not [a for a in argv if SECRETS["REDIS_PASSWORD"] in a], name
        test = service.get("healthcheck", {}).get("test", [])
        assert not [a for a in test if SECRETS["REDIS_PASSWORD"] in str(a)], name


def test_application_services_use_the_sentinels_only_when_told() -> None:
    default = resolved()
    for name in APP_SERVICES:
        service = default["services"][name]
        assert environment(service)["LESSON_REDIS_SENTINELS"] == "", name  # one Redis, as before
        assert environment(service)["LESSON_REDIS_MASTER"] == "lessons", name
        # they wait for the sentinels when the profile runs them; without it those do not exist
        for sentinel in SENTINELS:
            assert service["depends_on"][sentinel] == {"condition": "service_healthy", "required": False}, name
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}, name
    told = resolved(LESSON_REDIS_SENTINELS=SENTINEL_ADDRESSES)
    for name in APP_SERVICES:
        assert environment(told["services"][name])["LESSON_REDIS_SENTINELS"] == SENTINEL_ADDRESSES, name
    assert errors(told) == []


def test_the_documented_sentinel_addresses_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from scheduler.settings import Settings

    monkeypatch.setenv("LESSON_REDIS_SENTINELS", SENTINEL_ADDRESSES)
    monkeypatch.setenv("LESSON_REDIS_URL", f"redis://:{SECRETS['REDIS_PASSWORD']}@redis:6379/0")
    settings = Settings()  # type: ignore[call-arg]
    assert settings.sentinels == tuple((name, 26379) for name in SENTINELS)
    assert settings.min_replicas == 1
    assert SENTINEL_ADDRESSES in COMPOSE.read_text()  # the command the file's header shows
    assert SENTINEL_ADDRESSES in (REPO / "docs" / "operations.md").read_text()


@pytest.fixture
def sentinel_start(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """The sentinels' start script from compose.yaml, its fixed paths moved under tmp_path, and a stand-in
    for the image's docker-entrypoint.sh that records its argv."""
    doc = resolved()
    script = doc["configs"]["redis-sentinel-start"]["content"]
    data, etc, bin_ = tmp_path / "data", tmp_path / "etc", tmp_path / "bin"
    for folder in (data, etc, bin_):
        folder.mkdir()
    (etc / "sentinel.conf").write_text(doc["configs"]["redis-sentinel"]["content"])
    (bin_ / "docker-entrypoint.sh").write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGV_FILE"\n')
    (bin_ / "docker-entrypoint.sh").chmod(0o755)
    script = script.replace("/data/", f"{data}/").replace("/usr/local/etc/redis/", f"{etc}/")
    (tmp_path / "start.sh").write_text(script)
    yield tmp_path / "start.sh", data / "sentinel.conf", tmp_path / "argv"


def run_start(start: Path, argv_file: Path) -> list[str]:
    env = {"PATH": f"{start.parent / 'bin'}:/usr/bin:/bin", "SENTINEL_ANNOUNCE_HOSTNAME": "redis-sentinel-2",
           "ARGV_FILE": str(argv_file)}  # fmt: skip
    proc = subprocess.run(["sh", str(start)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return argv_file.read_text().splitlines()


@pytest.mark.skipif(shutil.which("sh") is None or shutil.which("grep") is None, reason="needs sh and grep")
def test_sentinel_start_copies_its_config_once_then_keeps_what_it_learned(
    sentinel_start: tuple[Path, Path, Path],
) -> None:
    start, conf, argv_file = sentinel_start
    argv = run_start(start, argv_file)
    assert argv == ["redis-server", str(conf), "--sentinel"]  # the password only in the file
    first = conf.read_text().splitlines()
    assert first[-1] == "sentinel announce-ip redis-sentinel-2"
    assert conf.stat().st_mode & 0o077 == 0
    # what Sentinel rewrites: the primary it now knows, its id, and the password as an ACL line
    learned = [line.replace("monitor lessons redis-1", "monitor lessons redis-3") for line in first
               if not line.startswith("requirepass")]  # fmt: skip
    learned += ['requirepass "old"', "user default on #0123 ~* &* +@all", "sentinel myid abc",
                "sentinel known-replica lessons redis-1 6379"]  # fmt: skip
    learned = [line.replace(f"pass lessons {SECRETS['REDIS_PASSWORD']}", "pass lessons old") for line in learned]
    conf.write_text("\n".join(learned) + "\n")
    assert run_start(start, argv_file) == argv
    again = conf.read_text().splitlines()
    # it keeps what it learned, once, and takes the password lines from Compose's config again
    assert "sentinel monitor lessons redis-3 6379 2" in again and "sentinel myid abc" in again
    assert "sentinel monitor lessons redis-1 6379 2" not in again
    assert again.count("sentinel announce-ip redis-sentinel-2") == 1
    assert "old" not in conf.read_text() and "user default" not in conf.read_text()
    password = SECRETS["REDIS_PASSWORD"]
    for line in (f"requirepass {password}", f"sentinel auth-pass lessons {password}",
                 f"sentinel sentinel-pass {password}"):  # fmt: skip
        assert again.count(line) == 1, line
    monitor = again.index("sentinel monitor lessons redis-3 6379 2")
    assert again.index(f"sentinel auth-pass lessons {password}") > monitor


# --- the image ----------------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_builds_the_shared_image() -> None:
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    run = " ".join(arg for op, arg in instructions if op == "RUN")
    for package in ("containernetworking-plugins", "iproute2", "iputils-ping"):
        assert package in run
    assert "pip install ." in run
    env = " ".join(arg for op, arg in instructions if op == "ENV")
    # pip installs the packages only; the catalog is found where the image copies it
    assert "LESSON_CATALOG=/app/config/lessons" in env
    assert ("COPY", "config ./config") in instructions
    assert any(op == "USER" and arg != "root" for op, arg in instructions)


def context_files() -> list[Path]:
    """The build context as .dockerignore leaves it (a whitelist: ``*`` then ``!path`` lines)."""
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    assert patterns[0] == "*", ".dockerignore must start by excluding everything"
    included = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    excluded = [p for p in patterns[1:] if not p.startswith("!")]
    files = []
    for top in included:
        root = REPO / top
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            rel = path.relative_to(REPO)
            if path.is_file() and not any(rel.match(p.replace("**/", "")) or p.strip("*/") in rel.parts
                                          for p in excluded):  # fmt: skip
                files.append(rel)
    return files


def test_build_context_leaves_out_secrets_and_local_state() -> None:
    files = {str(f) for f in context_files()}
    assert "pyproject.toml" in files and "README.md" in files
    for secret_or_local in (".env", ".venv", ".git", ".k8s", "tests", "kubeconfig"):
        assert not any(f == secret_or_local or f.startswith(secret_or_local + "/") for f in files)
    assert not any("__pycache__" in f for f in files)
    for op, arg in dockerfile():
        if op == "COPY":
            for source in arg.split()[:-1]:
                assert (REPO / source).exists(), source
                assert any(f == source or f.startswith(source + "/") for f in files), f"{source} is not in the context"


@pytest.mark.slow
def test_pip_install_works_from_the_build_context(tmp_path: Path) -> None:
    """What `RUN pip install .` sees: only the context's files. The wheel has the three packages and podproc.py."""
    context = tmp_path / "context"
    for rel in context_files():
        (context / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, context / rel)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "dist"),
         str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("lesson_scheduler-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("scheduler/settings.py", "scheduler/http/api.py", "workers/app.py", "workers/tasks.py",
                   "workers/backends/local/runtime/podproc.py", "lessonctl/cli.py"):  # fmt: skip
        assert module in names
    assert any(n.endswith("entry_points.txt") for n in names)
