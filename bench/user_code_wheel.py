"""What the local runner saves by naming the Transform/Trainer functions by import path.

With `module_file=` TFX 1.16 packages the module's directory (components/*.py) as a wheel for
each of the two components at every LocalDagRunner run (UserModuleFilePipDependency.resolve:
`setup.py bdist_wheel` in a subprocess), then pip-installs that wheel into a temporary
directory inside the components whenever they import from it: three times in the Transform
(get_fn of preprocessing_fn, try_get_fn of stats_options_updater_fn, the executor's
TempPipInstallContext), once in the Trainer (get_fn of run_fn); a run's log shows four
"Successfully installed tfx-user-code-..." lines. `graft run` now passes `preprocessing_fn=`
/ `run_fn=` import paths instead (pipeline/pipeline.py, module_files=False), so none of that
happens.

This times that work with TFX's own functions (tfx.components.util.udf_utils) on this
checkout's components/, REPEATS times, and writes bench/results/user_code_wheel.json:

    .venv/bin/python -m bench.user_code_wheel [--repeats 3]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time

from bench import common
from pipeline.pipeline import TRAINER_MODULE, TRANSFORM_MODULE

INSTALLS_PER_RUN = {"Transform": 3, "Trainer": 1}


@contextlib.contextmanager
def _quiet():
    """pip and setuptools write to fds 1 and 2: keep them out of the result."""
    sys.stdout.flush()
    saved = os.dup(1), os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def measure_once(root: str) -> dict:
    from tfx.components.util import udf_utils

    out = {}
    for name, module in (("Transform", TRANSFORM_MODULE), ("Trainer", TRAINER_MODULE)):
        start = time.time()
        with _quiet():
            wheel, _ = udf_utils.package_user_module_file(name, module, root)
        built = time.time()
        with _quiet():
            target = udf_utils.install_to_temp_directory(wheel)
        out[name] = {"build_s": round(built - start, 2),
                     "install_s": round(time.time() - built, 2)}
        shutil.rmtree(target, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    runs = []
    for _ in range(args.repeats):
        root = tempfile.mkdtemp(prefix="graft-wheel-")
        try:
            runs.append(measure_once(root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    per_run = {}
    for name, installs in INSTALLS_PER_RUN.items():
        build = statistics.median(r[name]["build_s"] for r in runs)
        install = statistics.median(r[name]["install_s"] for r in runs)
        per_run[name] = {"wheel_build_s": build, "pip_install_s": install,
                         "pip_installs_per_run": installs,
                         "seconds_per_run": round(build + installs * install, 2)}
    saved = round(sum(v["seconds_per_run"] for v in per_run.values()), 2)
    result = {"machine": common.machine(),
              "command": "python -m bench.user_code_wheel --repeats %d" % args.repeats,
              "load_average": [round(x, 2) for x in os.getloadavg()],
              "runs": runs, "per_graft_run": per_run, "seconds_saved_per_graft_run": saved}
    path = common.write_json("user_code_wheel.json", result)
    print("module files cost %.1f s per graft run (medians of %d: %s); written to %s"
          % (saved, args.repeats, per_run, path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
