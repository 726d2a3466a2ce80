"""The terminal of a graft command: graft's own lines there, everything else in a log file.

`session(output_dir, command, verbose)` points file descriptors 1 and 2 (os.dup2) at
OUTPUT/logs/<command>-<date>-<time>-<pid>.log, so that everything written below Python's
level lands there too: TensorFlow's C++ logging, absl, Beam worker processes, the pip
subprocesses of TFX, Keras' epoch lines. It keeps duplicates of the real stdout and stderr for
what graft itself has to say: `say()` (stdout, also copied into the log), `error()` (stderr:
the one-line cause first, then the log path). The Trainer's progress callback
(components/progress.py) finds the terminal through the `GRAFT_PROGRESS_FD` environment
variable that the session sets.

With verbose=True nothing is redirected and no log is written: everything shows on the
terminal as it comes (`-v/--verbose`). Outside a session, say() and error() print to
sys.stdout / sys.stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time

PROGRESS_FD_ENV = "GRAFT_PROGRESS_FD"   # read by components/progress.py
_current = None


def add_verbose_argument(p: argparse.ArgumentParser, log_dir: str = "OUTPUT/logs") -> None:
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show everything TensorFlow, absl, Beam and pip print on the terminal "
                   "(by default it goes to %s/COMMAND-TIME-PID.log)" % log_dir)


def _terminal(stream, fd: int):
    """(where graft's own lines go, whether it is our duplicate of fd): a duplicate of the
    real fd, unless Python's stream was already pointed elsewhere (e.g. pytest's capsys)."""
    try:
        if stream.fileno() == fd:
            return os.fdopen(os.dup(fd), "w", buffering=1, errors="replace"), True
    except (AttributeError, OSError, ValueError):
        pass
    return stream, False


class Session:
    """The redirection of one command (see the module docstring)."""

    def __init__(self, log_dir: str, command: str, verbose: bool = False):
        self.verbose = verbose
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.log_path = None if verbose else os.path.abspath(
            os.path.join(log_dir, "%s-%s-%d.log" % (command, stamp, os.getpid())))
        self._lock = threading.Lock()
        self._saved = ()
        self.out, self._own_out = sys.stdout, False
        self.err, self._own_err = sys.stderr, False

    def start(self) -> "Session":
        if self.verbose:
            return self
        try:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError:  # the command reports the unwritable output dir itself
            self.log_path = None
            return self
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.out, self._own_out = _terminal(sys.stdout, 1)
        self.err, self._own_err = _terminal(sys.stderr, 2)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        self._to_log(1, "graft %s, %s, pid %d" % (" ".join(sys.argv[1:]),
                                                  time.strftime("%Y-%m-%d %H:%M:%S"),
                                                  os.getpid()))
        if self._own_out:
            os.environ[PROGRESS_FD_ENV] = str(self.out.fileno())
        return self

    def say(self, text: str, err: bool = False) -> None:
        """A line of graft's own on the terminal (stdout, or stderr) and in the log."""
        with self._lock:
            stream = self.err if err else self.out
            stream.write(text + "\n")
            stream.flush()
            self._to_log(1, text)

    def _to_log(self, fd: int, text: str) -> None:
        if not self._saved:
            return
        try:  # a full disk must not turn a line of graft's into an exception
            (sys.stderr if fd == 2 else sys.stdout).flush()
            os.write(fd, (text + "\n").encode("utf-8", "replace"))
        except OSError:
            pass

    def error(self, text: str) -> None:
        """`error: <cause>` on stderr, then where the rest is (in the same line)."""
        where = " (full log: %s)" % self.log_path if self.log_path else ""
        with self._lock:
            self.err.write("error: %s%s\n" % (text, where))
            self.err.flush()
            self._to_log(2, "error: " + text)

    def stop(self) -> None:
        if not self._saved:
            return
        os.environ.pop(PROGRESS_FD_ENV, None)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._saved = ()
        if self._own_out:
            self.out.close()
        if self._own_err:
            self.err.close()
        self.out, self.err = sys.stdout, sys.stderr


@contextlib.contextmanager
def session(output_dir: str, command: str, verbose: bool = False):
    """Redirect for the duration of a command; an exception that escapes is logged with its
    traceback and shown as one `error:` line (then re-raised as SystemExit(1))."""
    global _current
    if _current is not None:  # e.g. retrain calls run: one session, one log
        yield _current
        return
    s = Session(os.path.join(output_dir, "logs"), command, verbose).start()
    _current = s
    try:
        yield s
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - everything ends as one line
        import traceback
        try:
            traceback.print_exc()  # into the log
        except OSError:
            pass
        from pipeline.reporting import errors
        s.error("interrupted" if isinstance(e, KeyboardInterrupt)
                else errors.error_line(e, output_dir))
        raise SystemExit(130 if isinstance(e, KeyboardInterrupt) else 1) from None
    finally:
        _current = None
        s.stop()


def current() -> Session | None:
    return _current


def say(text: str, err: bool = False) -> None:
    """A line of graft's own: on the terminal through the session, else on stdout (stderr)."""
    if _current is not None:
        _current.say(text, err)
    else:
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def error(text: str) -> None:
    """`error: text` on the real stderr (with the log path inside a session)."""
    if _current is not None:
        _current.error(text)
    else:
        print("error: %s" % text, file=sys.stderr, flush=True)
