"""docs/configuration.md and config/lessonctl.env.example stay in step with the settings model."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from scheduler.settings import Settings
from tests.support.lessons import REPO

GENERATOR = REPO / "docs" / "gen_configuration.py"
ENV_EXAMPLE = REPO / "config" / "lessonctl.env.example"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_configuration", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def env_names() -> list[str]:
    return [f"LESSON_{name.upper()}" for name in Settings.model_fields]


def test_configuration_doc_matches_the_settings_model() -> None:
    gen = generator()
    text = gen.DOC.read_text()
    assert text == gen.splice(text, gen.render()), (
        "docs/configuration.md is out of date: run .venv/bin/python docs/gen_configuration.py"
    )


def test_every_setting_has_a_row_with_its_default_and_description() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `\w+` \| `(LESSON_\w+)` \|.*$", text, re.M)}
    assert sorted(rows) == sorted(env_names())
    for name, info in Settings.model_fields.items():
        row = rows[f"LESSON_{name.upper()}"]
        assert info.description and info.description.split(";")[0] in row
        if isinstance(info.default, int | str) and not isinstance(info.default, bool):
            assert f"`{info.default}`" in row


def test_the_generator_detects_drift() -> None:
    gen = generator()
    text = gen.DOC.read_text()
    drifted = text.replace("`LESSON_TTL_SECONDS` | integer ≥ 10 | `1800`", "`LESSON_TTL_SECONDS` | integer | `60`")
    assert drifted != text
    assert drifted != gen.splice(drifted, gen.render())
    # the script's own check, as a developer runs it
    ok = subprocess.run([sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_env_example_documents_every_setting() -> None:
    text = ENV_EXAMPLE.read_text()
    documented = set(re.findall(r"^#? ?(LESSON_\w+)=", text, re.M))
    assert sorted(set(env_names()) - documented) == [], "settings missing from config/lessonctl.env.example"
    assert sorted(documented - set(env_names())) == [], "config/lessonctl.env.example names unknown settings"


def test_env_example_documents_every_compose_variable() -> None:
    compose = (REPO / "compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", compose))
    text = ENV_EXAMPLE.read_text() + (REPO / "config" / "secrets.env.example").read_text()
    documented = set(re.findall(r"^#? ?(\w+)=", text, re.M))
    assert sorted(used - documented) == [], "compose.yaml variables missing from the two env examples"


def test_env_example_with_its_defaults_uncommented_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every commented default in the example is a value the settings model accepts."""
    lines = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.match(r"^# (LESSON_\w+)=(\S*)$", line)
        if match and match.group(2):
            lines.append(f"{match.group(1)}={match.group(2)}")
    # all but the seven unset by default (token, kubeconfig, image substitute, image dir, insecure registries,
    # sentinels, min replicas)
    assert len(lines) >= len(env_names()) - 7
    env_file = tmp_path / "example.env"
    env_file.write_text("\n".join(lines) + "\n")
    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.backend == "kubernetes" and settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.ttl_seconds == Settings.model_fields["ttl_seconds"].default
