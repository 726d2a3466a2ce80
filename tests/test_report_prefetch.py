"""pipeline/runners/report_prefetch.py: the report's sections computed by a helper process
during the run land in the report cache, where the report finds them as this run's own; a
section the helper could not finish is left to the report."""
import time
from pathlib import Path

from pipeline import configs
from pipeline.data import demo_dataset
from pipeline.reporting import pixel_baseline
from pipeline.runners import report_prefetch


def _config(tmp_path: Path):
    data = demo_dataset.build(tmp_path / "digits", per_class=12, image_size=32, classes=3,
                              log=lambda *_: None)
    return configs.PipelineConfig(data_dir=data, output_dir=str(tmp_path / "out"))


def test_the_helpers_pixel_baseline_is_the_reports_own(tmp_path: Path):
    config = _config(tmp_path)
    start = time.time()
    prefetch = report_prefetch.Prefetch(config).start()
    prefetch.submit("pixel_baseline", 1)
    prefetch.submit("pixel_baseline", 1)  # once per section
    assert prefetch.wait(timeout=120) == {"pixel_baseline": None}
    found = pixel_baseline.for_run(config, 1, start)
    assert found.pop("precomputed") is True and "reused" not in found
    # The same result the report computes itself (a fresh output directory: no cache).
    fresh = configs.PipelineConfig(data_dir=config.data_dir, output_dir=str(tmp_path / "o2"))
    computed = pixel_baseline.for_run(fresh, 1, start)
    assert {k: v for k, v in computed.items() if k != "seconds"} == \
        {k: v for k, v in found.items() if k != "seconds"}


def test_a_section_the_helper_fails_is_left_to_the_report(tmp_path: Path):
    config = _config(tmp_path)
    prefetch = report_prefetch.Prefetch(config).start()
    prefetch.submit("pixel_baseline", 7)  # no span 7: nothing to fit
    result = prefetch.wait(timeout=120)
    assert result["pixel_baseline"].startswith("ValueError: too few decodable images"), result
    assert not (Path(config.output_dir) / ".report-cache").exists()


def test_a_dead_helper_does_not_hold_up_the_report(tmp_path: Path):
    config = _config(tmp_path)
    prefetch = report_prefetch.Prefetch(config).start()
    prefetch._process.kill()
    prefetch._process.wait()
    prefetch.submit("pixel_baseline", 1)
    t0 = time.time()
    assert prefetch.wait(timeout=120) == {"pixel_baseline": "not finished"}
    assert time.time() - t0 < 10
    assert not (Path(config.output_dir) / ".report-cache").exists()


def test_the_helper_ends_when_graft_is_killed(tmp_path: Path):
    """SIGKILL gives graft no chance to stop its helper: the helper sees its stdin close and
    ends."""
    import os
    import signal
    import subprocess
    import sys
    script = ("import os, signal, sys\n"
              "from pipeline import configs\n"
              "from pipeline.runners import report_prefetch\n"
              "p = report_prefetch.Prefetch(configs.PipelineConfig(data_dir='x', "
              "output_dir='y')).start()\n"
              "print(p._process.pid, flush=True)\n"
              "sys.stdin.readline()\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    graft = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, cwd=str(Path(__file__).parents[1]))
    helper = int(graft.stdout.readline())
    graft.stdin.write("\n")
    graft.stdin.flush()
    assert graft.wait(timeout=60) == -signal.SIGKILL
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with open("/proc/%d/stat" % helper) as f:
                if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return  # ended; not yet reaped by whoever adopted it
        except FileNotFoundError:
            return
        time.sleep(0.2)
    os.kill(helper, signal.SIGKILL)
    raise AssertionError("the helper outlived graft by 60 s")


def test_config_travels_as_json():
    from components.training_config import TrainingConfig
    config = configs.PipelineConfig(
        training=TrainingConfig(label_names=("a", "b"), fine_tune_fraction=0.5),
        data_dir="/d", output_dir="/o", num_spans=3, test_pattern="")
    assert report_prefetch.config_from_json(report_prefetch.config_to_json(config)) == config


def test_the_callers_script_runs_once(tmp_path: Path):
    """A script without a `__main__` guard that runs graft: the helper must not run it again
    (a multiprocessing child would re-import it, and start the pipeline a second time)."""
    import json
    import os
    import subprocess
    import sys
    config = _config(tmp_path)
    runs = tmp_path / "runs.txt"
    script = tmp_path / "user_script.py"
    script.write_text(
        "import json\n"
        "from pipeline.runners import report_prefetch\n"
        "with open(%r, 'a') as f:\n"
        "    f.write('ran\\n')\n"
        "config = report_prefetch.config_from_json(json.loads(%r))\n"
        "p = report_prefetch.Prefetch(config).start()\n"
        "p.submit('pixel_baseline', 1)\n"
        "print(json.dumps(p.wait(timeout=120)))\n"
        % (str(runs), json.dumps(report_prefetch.config_to_json(config))))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=300, cwd=str(Path(__file__).parents[1]),
                         env=dict(os.environ,
                                  PYTHONPATH=str(Path(__file__).parents[1])))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == '{"pixel_baseline": null}'
    assert runs.read_text() == "ran\n"
