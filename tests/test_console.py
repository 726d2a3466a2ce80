"""What `graft run` prints (pipeline/console.py, pipeline/runners/follow.py,
components/progress.py): with stdout captured (not a terminal) the contract lines and nothing
of TensorFlow, absl, Beam or pip, which go to OUTPUT/logs/run-*.log instead; a failure's
one-line cause names that log; the redirection catches what subprocesses and C code write."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline_runs import CLASSES, FAST, PER_CLASS, PNG_SIZE, REPO, graft

NODES = ("ImportExampleGen", "ImageCheck", "StatisticsGen", "SchemaGen", "ExampleValidator",
         "DataGate", "Transform", "Trainer", "Evaluator", "VersionedPusher", "TFLiteExport")
# What the issue found in the demo's 239 lines; none of it may reach the terminal.
NOISE = ("cuDNN", "cuFFT", "cuBLAS", "property_predicate", "Looking in indexes", "Processing ",
         "Successfully installed", "snappy", "__main__", "WARNING:", "Epoch 1/", "tfx_user_code",
         "I0000", "W0000", "E0000", "Traceback")


def _session_script(tmp_path: Path, verbose: bool) -> subprocess.CompletedProcess:
    """A session whose process writes below Python: os.write on fd 1 and 2, a child process,
    a print; graft's own line through console.say."""
    code = textwrap.dedent("""
        import os, subprocess, sys
        from pipeline import console
        with console.session(sys.argv[1], "test", verbose=sys.argv[2] == "1") as s:
            os.write(1, b"raw fd1 noise\\n")
            os.write(2, b"raw fd2 noise\\n")
            subprocess.run(["sh", "-c", "echo child noise; echo child err >&2"], check=True)
            print("python print noise")
            console.say("graft line")
            print("LOG=%s" % s.log_path, file=sys.stderr)
        print("after the session")
    """)
    return subprocess.run([sys.executable, "-c", code, str(tmp_path), "1" if verbose else "0"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=True)


def test_session_sends_fd_level_output_to_the_log(tmp_path):
    proc = _session_script(tmp_path, verbose=False)
    assert proc.stdout.splitlines() == ["graft line", "after the session"]
    assert "noise" not in proc.stderr and "LOG=" not in proc.stderr
    (log,) = (tmp_path / "logs").glob("test-*.log")
    text = log.read_text()
    for line in ("raw fd1 noise", "raw fd2 noise", "child noise", "child err",
                 "python print noise", "graft line", "LOG=%s" % log):
        assert line in text, (line, text)
    assert "after the session" not in text


def test_verbose_session_redirects_nothing(tmp_path):
    proc = _session_script(tmp_path, verbose=True)
    assert "raw fd1 noise" in proc.stdout and "child noise" in proc.stdout
    assert "graft line" in proc.stdout and "child err" in proc.stderr
    assert not (tmp_path / "logs").exists()


def test_progress_writes_one_plain_line_per_epoch_when_not_a_terminal(tmp_path, monkeypatch):
    import numpy as np
    import tf_keras

    from components import progress

    out = tmp_path / "terminal.txt"
    with open(out, "w") as f:
        monkeypatch.setenv(progress.ENV, str(f.fileno()))
        model = tf_keras.Sequential([tf_keras.layers.Dense(2, activation="softmax")])
        model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        x, y = np.random.rand(20, 3).astype("float32"), np.arange(20) % 2
        model.fit(x, y, validation_data=(x, y), epochs=3, batch_size=8, verbose=0,
                  callbacks=progress.callbacks("phase 1"))
    lines = out.read_text().splitlines()
    assert len(lines) == 3, lines
    for i, line in enumerate(lines, 1):
        assert re.fullmatch(r"    phase 1 epoch %d/3: loss [0-9.]+, accuracy [0-9.]+, "
                            r"val_loss [0-9.]+, val_accuracy [0-9.]+ \([0-9.]+ s\)" % i,
                            line), line
    monkeypatch.delenv(progress.ENV)
    assert progress.callbacks("phase 1") == []


def test_progress_draws_a_bar_per_phase_on_a_terminal(monkeypatch):
    import pty
    import threading

    import numpy as np
    import tf_keras

    from components import progress

    master, slave = pty.openpty()
    chunks = []
    reader = threading.Thread(target=lambda: _drain(master, chunks), daemon=True)
    reader.start()
    monkeypatch.setenv(progress.ENV, str(slave))
    model = tf_keras.Sequential([tf_keras.layers.Dense(2, activation="softmax")])
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.rand(32, 3).astype("float32"), np.arange(32) % 2
    model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=8, verbose=0,
              callbacks=progress.callbacks("phase 2"))
    os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    # tqdm redraws one line with \r; what stays on screen is its last state.
    final = [part for part in re.split(r"[\r\n]", text) if part.strip()][-1]
    assert "phase 2 epoch 2/2" in final and "100%" in final, text
    assert "step 8/8" in final and re.search(r"val_accuracy [0-9.]+", final), text
    assert "\n" not in text.rstrip("\r\n"), text  # one bar, not one line per epoch


def _drain(fd, chunks):
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            return
        if not data:
            return
        chunks.append(data)


def test_bad_input_error_names_the_log(tmp_path):
    out = tmp_path / "out"
    proc = graft("run", "--data", tmp_path / "missing", "--output", out, check=False,
                 timeout=120)
    assert proc.returncode == 2
    (log,) = (out / "logs").glob("run-*.log")
    assert proc.stderr.strip().splitlines() == [
        "error: --data %s is not a directory (full log: %s)" % (tmp_path / "missing", log)]
    assert "is not a directory" in log.read_text()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from pipeline.data import demo_dataset

    root = tmp_path_factory.mktemp("console")
    data = demo_dataset.build(root / "data", per_class=PER_CLASS, image_size=PNG_SIZE,
                              classes=CLASSES, log=lambda *_: None)
    out = root / "out"
    # beam-mode multi_processing (the default): Beam worker processes write to the log too.
    args = [a for a in FAST if a not in ("--beam-mode", "in_memory")]
    proc = graft("run", "--data", data, "--output", out, "--serving-dir", root / "serving",
                 *args, "--epochs", 3, "--fine-tune-epochs", 1, "--fine-tune-layers", 10)
    return proc, out


@pytest.mark.e2e
def test_run_prints_the_contract_lines_and_no_noise(run):
    proc, out = run
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("graft run: %d classes from " % CLASSES), lines[0]
    finished = {}
    for line in lines:
        m = re.match(r"  (\w+) +(complete|cached|failed) +(\d+) s(?:  (.*))?$", line)
        if m:
            finished[m.group(1)] = (m.group(2), m.group(4) or "")
    assert set(finished) == set(NODES), lines
    assert all(state == "complete" for state, _ in finished.values()), finished
    n = CLASSES * PER_CLASS
    assert re.fullmatch(r"%d images checked \(train \d+, eval \d+, test \d+\), 0 dropped" % n,
                        finished["ImageCheck"][1]), finished["ImageCheck"]
    assert finished["ExampleValidator"][1] == "no anomalies"
    assert re.fullmatch(r"val accuracy [0-9.]+ \(phase 1 [0-9.]+, phase 2 [0-9.]+ (not )?kept\)",
                        finished["Trainer"][1]), finished["Trainer"]
    assert re.fullmatch(r"blessed \(test accuracy [0-9.]+\)", finished["Evaluator"][1])
    assert re.fullmatch(r"pushed as version \d+", finished["VersionedPusher"][1])
    assert re.fullmatch(r"TFLite int8 [0-9.]+ MB, accuracy [0-9.]+ \([-+][0-9.]+ points\), "
                        r"(not )?pushed", finished["TFLiteExport"][1]), finished["TFLiteExport"]
    assert "  Trainer           started" in lines
    epochs = [line for line in lines if re.match(r"    phase [12] epoch \d+/\d+: loss ", line)]
    assert [e.split(":")[0].strip() for e in epochs[:1]] == ["phase 1 epoch 1/3"]
    assert any(e.strip().startswith("phase 2 epoch 1/1") for e in epochs), epochs
    # In order: the Trainer starts, its epochs, its finish line, then the summary.
    summary_at = next(i for i, line in enumerate(lines) if line.startswith("graft run summary"))
    trainer_done = next(i for i, line in enumerate(lines) if line.startswith("  Trainer  ")
                        and "complete" in line)
    assert lines.index("  Trainer           started") < lines.index(epochs[0]) \
        < trainer_done < summary_at
    summary = proc.stdout[proc.stdout.index("graft run summary"):]
    assert "blessed: yes" in summary
    assert re.search(r"pixel baseline: logistic regression on raw 32x32 pixels, same split: "
                     r"test accuracy [0-9.]+ \(graft: [0-9.]+, [+-][0-9.]+ points", summary)
    (log,) = (out / "logs").glob("run-*.log")
    assert "  log: %s " % log in summary
    for pattern in NOISE:
        assert pattern not in proc.stdout and pattern not in proc.stderr, pattern
    assert proc.stderr.strip() == ""


@pytest.mark.e2e
def test_run_log_holds_tensorflow_absl_and_beam_output(run):
    proc, out = run
    (log,) = (out / "logs").glob("run-*.log")
    text = log.read_text()
    assert "graft trainer: backbone=" in text          # the Trainer's own prints
    assert re.search(r"^Epoch 1/3$", text, re.M)       # Keras' epoch lines
    assert "WARNING:absl:" in text                     # absl, through TFX
    assert "apache_beam" in text                       # Beam's logging
    # Every terminal line is in the log too, in the same order.
    terminal = [line for line in proc.stdout.splitlines() if line.strip()]
    logged = [line for line in text.splitlines() if line in set(terminal)]
    assert logged == terminal
    # The local runner builds and installs no user-code wheel.
    assert "tfx_user_code" not in text and "Successfully installed" not in text
    assert not os.path.exists(out / "pipeline_root" / "_wheels")
