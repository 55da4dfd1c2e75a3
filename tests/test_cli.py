"""The command line: help, and one-line errors for misuse."""

from __future__ import annotations

from tests.conftest import run_cli


def test_help_lists_the_contract():
    out = run_cli("--help").stdout
    for command in ("data", "ids", "quickstart"):
        assert command in out
    assert "prepare" in run_cli("data", "--help").stdout
    assert "build" in run_cli("ids", "--help").stdout


def test_misuse_gives_one_line_errors(tmp_path):
    result = run_cli("data", "prepare", "--dataset", "ml-1b", "--out", tmp_path / "x", check=False)
    assert result.returncode == 2 and result.stderr.strip() == "error: unknown --dataset 'ml-1b' (expected ml-100k or amazon)"
    result = run_cli("ids", "build", "--data", tmp_path, check=False)
    assert result.returncode == 2 and "not a prepared dataset" in result.stderr
    assert "Traceback" not in result.stderr
