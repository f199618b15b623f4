"""The docs' result tables are generated from benchmarks/results/*.json and cannot drift from them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "tables.py"
DOCUMENTS = ("README.md", "benchmarks/RESULTS.md", "benchmarks/README.md")


def _tables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=60)


def _copy_repository(tmp_path: Path) -> Path:
    """The documents and the results JSON, nothing else: what the script reads."""
    for document in DOCUMENTS:
        (tmp_path / document).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / document, tmp_path / document)
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True, exist_ok=True)
    for path in (ROOT / "benchmarks" / "results").glob("*.json"):
        shutil.copy(path, results / path.name)
    return tmp_path


def test_repository_tables_match_the_json():
    result = _tables("--check")
    assert result.returncode == 0, result.stderr


def test_every_document_has_generated_tables():
    for document in DOCUMENTS:
        text = (ROOT / document).read_text(encoding="utf-8")
        assert text.count("<!-- table:") == text.count("<!-- /table -->") >= 1, document


def test_a_changed_figure_fails_the_check_and_a_rewrite_fixes_it(tmp_path):
    root = _copy_repository(tmp_path)
    defaults = root / "benchmarks" / "results" / "quality-defaults-kept-seed0.json"
    result = json.loads(defaults.read_text(encoding="utf-8"))
    result["variants"]["full"]["mri2ct"]["mae_hu"] = 88.4  # the defaults' run, seed 0
    defaults.write_text(json.dumps(result), encoding="utf-8")

    check = _tables("--check", "--root", str(root))
    assert check.returncode == 1
    assert "README.md: table quality-summary differs from benchmarks/results" in check.stderr
    assert "benchmarks/RESULTS.md: table quality-defaults differs" in check.stderr
    assert (root / "README.md").read_bytes() == (ROOT / "README.md").read_bytes()  # --check writes nothing

    assert _tables("--root", str(root)).returncode == 0
    assert ("| **defaults** (mirror-averaged) | 0 | 2000 | 88 | 27.8 | 0.93 |"
            in (root / "README.md").read_text(encoding="utf-8"))
    assert _tables("--check", "--root", str(root)).returncode == 0


def test_a_speed_figure_change_fails_the_check(tmp_path):
    root = _copy_repository(tmp_path)
    train = root / "benchmarks" / "results" / "train-tensorflow-mixed_bfloat16-128px-b4.json"
    result = json.loads(train.read_text(encoding="utf-8"))
    result["images_per_s"] = 9.99
    train.write_text(json.dumps(result), encoding="utf-8")
    check = _tables("--check", "--root", str(root))
    assert check.returncode == 1
    assert "benchmarks/README.md: table speed-train differs" in check.stderr
