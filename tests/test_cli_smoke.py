import subprocess
import sys


def run_ops(*args):
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], capture_output=True, text=True)


def test_help_lists_exit_codes():
    p = run_ops("--help")
    assert p.returncode == 0
    assert "usage error" in p.stdout


def test_bad_flag_is_one_line_exit_2():
    p = run_ops("--no-such-flag")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "no-such-flag" in p.stderr
    assert "Traceback" not in p.stderr
