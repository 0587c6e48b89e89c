"""The command line's contract: one-line errors, exit status 2, no tracebacks."""
import subprocess
import sys

from spresso.cli import main


def test_config_show_prints_resolved_values(capsys):
    assert main(["config", "--config", "demo", "--set", "data.clip_seconds=2.5"]) == 0
    out = capsys.readouterr().out
    assert "clip_seconds: 2.5" in out and "workdir: work/demo" in out


def test_unknown_config_key_is_one_line_error(capsys):
    assert main(["config", "--set", "data.clip_secs=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.endswith("demo.yaml: unknown config key 'data.clip_secs'")
    assert len(err.splitlines()) == 1


def test_console_script_runs_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "spresso.cli", "config", "--config", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: config file not found") and "Traceback" not in proc.stderr
