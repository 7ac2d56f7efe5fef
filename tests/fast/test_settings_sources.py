"""Where settings come from: the environment, then JOBSYS_ENV_FILE, ./.jobsys.env, the
user's config directory and /etc/jobsys/env, in that order; and the README's table
lists every setting there is."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobsys import settings as settings_module
from jobsys.settings import Settings, setting_sources

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Every place a setting can come from, empty, in a folder of the test's own."""
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    system = tmp_path / "etc" / "jobsys" / "env"
    monkeypatch.setattr(settings_module, "SYSTEM_ENV_FILE", system)
    for name in ("JOBSYS_ENV_FILE", "JOBSYS_NAMESPACE", "JOBSYS_SECRET"):
        monkeypatch.delenv(name, raising=False)
    return {
        "named": tmp_path / "named.env",
        "cwd": project / ".jobsys.env",
        "user": tmp_path / "xdg" / "jobsys" / "env",
        "system": system,
    }


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_each_place_is_read_and_the_higher_one_wins(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    order = ["named", "cwd", "user", "system"]  # highest first
    for key in order:
        _write(places[key], f"JOBSYS_NAMESPACE=from_{key}\n")
    monkeypatch.setenv("JOBSYS_ENV_FILE", str(places["named"]))
    monkeypatch.setenv("JOBSYS_NAMESPACE", "from_env")
    assert Settings().namespace == "from_env"
    assert setting_sources()["namespace"] == "environment"
    monkeypatch.delenv("JOBSYS_NAMESPACE")
    for i, key in enumerate(order):
        assert Settings().namespace == f"from_{key}", key
        assert setting_sources()["namespace"] == str(places[key]), key
        if key == "named":
            monkeypatch.delenv("JOBSYS_ENV_FILE")
        else:
            places[key].unlink()
        if i == len(order) - 1:
            assert Settings().namespace == "jobsys"
            assert setting_sources()["namespace"] == "default"


def test_a_file_lower_down_still_gives_what_the_higher_ones_do_not(
    places: dict[str, Path],
) -> None:
    _write(places["user"], "JOBSYS_SECRET=from-user\nJOBSYS_NAMESPACE=user\n")
    _write(places["cwd"], "JOBSYS_NAMESPACE=project\n")
    got = Settings()
    assert got.namespace == "project"
    assert got.secret is not None and got.secret.get_secret_value() == "from-user"


def test_the_user_config_dir_defaults_to_dot_config(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _write(tmp_path / "home" / ".config" / "jobsys" / "env", "JOBSYS_NAMESPACE=home\n")
    assert Settings().namespace == "home"


def test_a_missing_jobsys_env_file_is_an_error_not_silence(
    places: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBSYS_ENV_FILE", str(places["named"]))
    with pytest.raises(ValueError, match="no such file"):
        Settings()


# -- the README's settings table ---------------------------------------------------


def _readme_settings() -> set[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(JOBSYS_[A-Z0-9_]+)` \|", section, re.MULTILINE))


def test_the_readme_table_lists_every_setting_and_nothing_else() -> None:
    fields = {f"JOBSYS_{name.upper()}" for name in Settings.model_fields}
    table = _readme_settings()
    assert sorted(fields - table) == [], "settings missing from README's table"
    assert sorted(table - fields) == [], "README's table lists what is not a setting"
