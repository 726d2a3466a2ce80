"""pipeline/cli.py's exit without the interpreter's teardown: the exit code, stdout, atexit
handlers and non-daemon threads are those of a normal exit."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_exit_without_teardown_keeps_what_a_normal_exit_does(tmp_path: Path):
    script = (
        "import atexit, sys, threading, time\n"
        "from pipeline import cli\n"
        "def late():\n"
        "    time.sleep(0.5)\n"
        "    open(%r, 'w').write('thread')\n"
        "threading.Thread(target=late).start()\n"
        "atexit.register(lambda: open(%r, 'w').write('atexit'))\n"
        "sys.stdout.write('buffered, no newline')\n"
        "cli.exit_without_teardown(3)\n"
        "print('not reached')\n" % (str(tmp_path / "thread"), str(tmp_path / "atexit")))
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "buffered, no newline"
    assert (tmp_path / "thread").read_text() == "thread"
    assert (tmp_path / "atexit").read_text() == "atexit"


def test_the_command_exits_with_mains_code(tmp_path: Path):
    """`python -m pipeline.cli` goes through entry(): main's code on return, argparse's 2 on a
    usage error (SystemExit: the normal exit)."""
    ok = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "make-tfrecords" in ok.stdout
    missing = tmp_path / "missing"
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "make-tfrecords", str(missing),
                          str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode not in (0, None) and "missing" in bad.stderr + bad.stdout
    usage = subprocess.run([sys.executable, "-m", "pipeline.cli", "no-such-command"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2
