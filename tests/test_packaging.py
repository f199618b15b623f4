"""Install where users are: the console command, ``python -m``, the TensorFlow dependency, LICENSE."""

from __future__ import annotations

import configparser
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("evaluate", "export", "fit", "phantom", "predict")


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    return parser


def _requirements(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _commands_listed(output: str) -> list[str]:
    """The command names under click's 'Commands:' heading."""
    listed = output.split("Commands:", 1)[1]
    return sorted(line.split()[0] for line in listed.splitlines() if line.startswith("  ") and line.split())


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def test_python_m_lists_the_commands():
    result = _run([sys.executable, "-m", "keras_vaegan", "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: python -m keras_vaegan")
    assert _commands_listed(result.stdout) == list(COMMANDS)


def test_console_command_lists_the_commands():
    script = Path(sysconfig.get_path("scripts")) / ("keras-vaegan.exe" if os.name == "nt" else "keras-vaegan")
    if not script.exists():
        pytest.fail(f"{script} missing: install the project (pip install -e .) so the entry point exists")
    result = _run([str(script), "--help"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: keras-vaegan")
    assert _commands_listed(result.stdout) == list(COMMANDS)


def test_entry_point_is_declared():
    scripts = _requirements(_setup_cfg()["options.entry_points"]["console_scripts"])
    assert scripts == ["keras-vaegan = keras_vaegan.cli:main"]


def test_tensorflow_not_tensorflow_cpu_with_a_gpu_extra():
    cfg = _setup_cfg()
    needs = _requirements(cfg["options"]["install_requires"])
    tensorflow = [r for r in needs if r.startswith("tensorflow")]
    assert tensorflow == ["tensorflow>=2.16"]  # every platform, arm64 macOS included: no marker
    assert _requirements(cfg["options.extras_require"]["gpu"]) == ["tensorflow[and-cuda]>=2.16"]


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert _setup_cfg()["metadata"]["license"] == "Apache-2.0"
