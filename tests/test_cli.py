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
    # Without CUDA the first complaint is the missing device; with it, the prefix cache the graphs cannot use.
    result = run_cli("serve", "--run", tmp_path, "--cuda-graphs", "--prefix-cache-blocks", "8", check=False)
    assert result.returncode == 2 and result.stderr.startswith("error: --cuda-graphs ")
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_quickstart_end_to_end(tmp_path):
    """The README's main job with tiny training budgets: every stage runs and the table prints."""
    result = run_cli("quickstart", "--out", tmp_path / "qs", "--minutes", "0.1", "--sasrec-minutes", "0.1")
    out = result.stdout
    assert "MovieLens-100K test split" in out and "R@10" in out
    for run in ("causal", "sasrec", "pop"):
        assert (tmp_path / "qs" / "runs" / run / "metrics-test.json").exists()
    assert out.count("recently watched:") == 2 and "held-out next movie" in out
    report = (tmp_path / "qs" / "report" / "report.md").read_text()
    assert "| causal |" in report and (tmp_path / "qs" / "report" / "metrics.png").exists()
