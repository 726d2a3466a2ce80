"""Training progress on the user's terminal, for `graft run` on the local runner.

The runner's console (pipeline/console.py) sends everything the process prints to a log file
and names the real terminal's file descriptor in GRAFT_PROGRESS_FD. The Trainer runs in that
process, so `callbacks(phase)` returns a Keras callback writing there: on a terminal one live
bar per training phase (tqdm: epoch, step, ETA, loss, val accuracy), otherwise (CI, cron) one
plain line per epoch. Without GRAFT_PROGRESS_FD (Kubeflow, plain Keras, tests) it returns no
callback and Keras' own epoch lines are all there is. The plain epoch lines go to the log
(fd 1, which the console points at it) too.
"""
from __future__ import annotations

import os
import sys
import time

import tf_keras

ENV = "GRAFT_PROGRESS_FD"


def callbacks(phase: str) -> list:
    fd = os.environ.get(ENV)
    if not fd or not fd.isdigit():
        return []
    try:
        os.fstat(int(fd))
    except OSError:
        return []
    return [Progress(phase, int(fd))]


def epoch_line(phase: str, epoch: int, epochs: int, logs: dict, seconds: float) -> str:
    """'    phase 1 epoch 3/30: loss 0.6123, accuracy 0.8120, val_loss ..., val_accuracy ...'"""
    shown = ", ".join("%s %.4f" % (k, logs[k]) for k in ("loss", "accuracy", "val_loss",
                                                          "val_accuracy") if k in logs)
    return "    %s epoch %d/%d: %s (%.1f s)" % (phase, epoch, epochs, shown, seconds)


def _to_log(line: str) -> None:
    """The epoch line into the log as well: under the console, fd 1 is the log file."""
    try:
        sys.stdout.flush()
        os.write(1, line.encode())
    except OSError:
        pass


class Progress(tf_keras.callbacks.Callback):
    """A tqdm bar per fit() on a terminal, else one line per epoch."""

    def __init__(self, phase: str, fd: int):
        super().__init__()
        self.phase = phase
        self.stream = os.fdopen(fd, "w", buffering=1, closefd=False)
        self.tty = self.stream.isatty()
        self.bar = None

    def on_train_begin(self, logs=None):
        self.epochs = int(self.params.get("epochs") or 0)
        self.steps = self.params.get("steps")
        self.val_accuracy = None
        if self.tty:
            from tqdm import tqdm
            try:
                columns = os.get_terminal_size(self.stream.fileno()).columns
            except OSError:
                columns = 0
            # A terminal that reports no width (some pseudo-terminals) gets 100 columns.
            width = {"dynamic_ncols": True} if columns else {"ncols": 100}
            self.bar = tqdm(total=self.epochs * self.steps if self.steps else None,
                            file=self.stream, unit="step", leave=True, **width,
                            desc="    " + self.phase, mininterval=0.5,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| step {n_fmt}/"
                            "{total_fmt} [{elapsed}<{remaining}]{postfix}")

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch + 1
        self.epoch_start = time.time()
        if self.bar is not None:
            self.bar.set_description("    %s epoch %d/%d" % (self.phase, self.epoch,
                                                            self.epochs), refresh=False)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is None:
            return
        self.bar.update(1)
        post = "loss %.4f" % (logs or {}).get("loss", float("nan"))
        if self.val_accuracy is not None:
            post += ", val_accuracy %.4f" % self.val_accuracy
        self.bar.set_postfix_str(post, refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        line = epoch_line(self.phase, epoch + 1, self.epochs, logs,
                          time.time() - self.epoch_start) + "\n"
        _to_log(line)
        if self.bar is None:
            self.stream.write(line)
            self.stream.flush()
            return
        if self.bar.total is None:  # steps per epoch known after the first epoch
            self.bar.total = self.bar.n * self.epochs
        self.val_accuracy = logs.get("val_accuracy")
        self.bar.set_postfix_str("loss %.4f, val_accuracy %.4f" % (
            logs.get("loss", float("nan")), logs.get("val_accuracy", float("nan"))))

    def on_train_end(self, logs=None):
        if self.bar is None:
            return
        if self.bar.n < (self.bar.total or 0):  # early stopping ended the phase
            self.bar.set_description("    %s stopped at epoch %d/%d" % (
                self.phase, self.epoch, self.epochs), refresh=False)
            self.bar.total = self.bar.n
        self.bar.close()
        self.bar = None
