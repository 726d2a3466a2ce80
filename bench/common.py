"""Shared helpers for the benchmarks: machine description, process-tree RSS sampling,
directory sizes, and the flowers-dev location (skipped cleanly when absent)."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLOWERS = Path(os.environ.get("GRAFT_FLOWERS_DIR", REPO.parent / "shared" / "data" / "flowers-dev"))
RESULTS = REPO / "bench" / "results"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import tensorflow as tf
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": round(mem_gb, 1),
            "gpu": bool(tf.config.list_physical_devices("GPU")),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "date": time.strftime("%Y-%m-%d")}


def dir_bytes(path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


class PeakRss:
    """Samples the memory of a process and all its children (Beam workers) every 0.5 s:
    the sum of RSS (overcounts pages the workers share, e.g. TensorFlow's libraries), the
    sum of PSS (shared pages split between their users: the honest total) and the largest
    single RSS."""

    def __init__(self, pid: int):
        import psutil
        self.proc = psutil.Process(pid)
        self.peak_tree = 0
        self.peak_pss = 0
        self.peak_single = 0
        self.samples = []  # (unix time, PSS bytes of the tree)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil
        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                rss, pss = [], []
                for p in procs:
                    try:
                        info = p.memory_full_info()
                        rss.append(info.rss)
                        pss.append(info.pss)
                    except psutil.Error:
                        pass
                self.peak_tree = max(self.peak_tree, sum(rss))
                self.peak_pss = max(self.peak_pss, sum(pss))
                self.samples.append((time.time(), sum(pss)))
                self.peak_single = max([self.peak_single] + rss)
            except psutil.Error:
                pass
            time.sleep(0.5)

    def stop(self):
        self._stop.set()
        self._thread.join()


def run_measured(cmd: list, log_path: Path, env=None, samples=False) -> dict:
    """Runs CMD with its output in LOG_PATH: return code, seconds, peak memory of the tree;
    with SAMPLES, also "pss_samples": [(unix time, PSS bytes)] every 0.5 s."""
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        rss = PeakRss(proc.pid)
        code = proc.wait()
        rss.stop()
    return {"returncode": code, "seconds": round(time.time() - start, 1),
            "peak_rss_tree_mb": round(rss.peak_tree / 2**20),
            "peak_pss_tree_mb": round(rss.peak_pss / 2**20),
            "peak_rss_single_mb": round(rss.peak_single / 2**20),
            **({"pss_samples": rss.samples} if samples else {})}


def load_results(name: str, fresh: bool = False) -> dict:
    """The points a benchmark recorded earlier (kept across reruns), or none when FRESH."""
    path = RESULTS / name
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    return {"points": []}


def flowers_work_dir(path: str):
    """WORK as a created directory, or None (after saying so) when flowers-dev is absent."""
    if not FLOWERS.is_dir():
        print("skipped: %s is absent" % FLOWERS)
        return None
    work = Path(path)
    work.mkdir(parents=True, exist_ok=True)
    return work


def flowers_tfrecords(work: Path) -> Path:
    """flowers-dev converted by `graft make-tfrecords` into WORK/tfrecords (once)."""
    data = work / "tfrecords"
    if not (data / "labels.txt").exists():
        run_measured([sys.executable, "-m", "pipeline.cli", "make-tfrecords", str(FLOWERS),
                      str(data)], work / "make_tfrecords.log")
    return data


def newest(pattern: str) -> str:
    """The most recently modified path matching PATTERN (a finished run's newest artifact)."""
    import glob
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        raise SystemExit("error: nothing matches %s" % pattern)
    return found[-1]


def run_label_names(run: str, data: str = "") -> list:
    """The class names of a `graft run` output directory's data: DATA's labels.txt, by
    default RUN/../tfrecords (where bench.pipeline_flowers converts the images)."""
    from pipeline import configs
    return configs.read_label_names(
        data or os.path.join(os.path.dirname(os.path.abspath(run)), "tfrecords"))


def component_windows(metadata_path) -> dict:
    """{node: (start, end)} in unix seconds of each pipeline node's execution in the last run,
    from ML Metadata."""
    from pipeline.reporting import mlmd as mlmd_query
    store = mlmd_query.open_store(str(metadata_path))
    return {node: (e.create_time_since_epoch / 1000, e.last_update_time_since_epoch / 1000)
            for node, e in mlmd_query.node_executions(store).items()}


def component_seconds(windows: dict) -> dict:
    """Wall seconds per pipeline node (windows: component_windows())."""
    return {node: round(hi - lo, 1) for node, (lo, hi) in windows.items()}


def component_peak_pss(windows: dict, samples) -> dict:
    """Peak PSS (MB) of the process tree while each pipeline node ran (windows:
    component_windows(); samples: run_measured's): which component holds the memory."""
    out = {}
    for node, (lo, hi) in windows.items():
        inside = [pss for t, pss in samples if lo <= t <= hi]
        if inside:
            out[node] = round(max(inside) / 2**20)
    return out


def trainer_summary(log_text: str) -> dict:
    """The training summary the Trainer prints as `graft trainer: {json}`."""
    line = next(x for x in log_text.splitlines() if x.startswith("graft trainer: {"))
    return json.loads(line[len("graft trainer: "):])


def eval_accuracy(log_text: str):
    """The Evaluator's (gating) accuracy from the `graft run` summary's blessed line, or
    None; logs of runs before the test split say "eval accuracy" there too."""
    import re
    m = re.search(r"blessed: \w+ \((?:test|eval) accuracy ([0-9.]+)", log_text) or \
        re.search(r"eval accuracy ([0-9.]+)", log_text)
    return float(m.group(1)) if m else None


def summary_accuracies(log_text: str) -> dict:
    """{role: {split, accuracy, ci95, examples}} from the summary's accuracy lines
    ('test accuracy 0.9333, 95 % CI 0.88-0.96 (150 examples): gates the push')."""
    import re
    out = {}
    for m in re.finditer(r"^  (test|eval) accuracy ([0-9.]+), 95 % CI ([0-9.]+)-([0-9.]+) "
                         r"\((\d+) examples\): (.*)$", log_text, re.M):
        out[m.group(6)] = {"split": m.group(1), "accuracy": float(m.group(2)),
                           "ci95": [float(m.group(3)), float(m.group(4))],
                           "examples": int(m.group(5))}
    return out


def write_json(name: str, data: dict) -> Path:
    """DATA as JSON at bench/results/NAME (or at NAME when it is an absolute path)."""
    path = RESULTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def start_server(base: str, name: str, port: int, log_path: str, extra=()):
    """`graft serve` as a subprocess; (Popen, served version) once a version is AVAILABLE."""
    import grpc

    from serving import protos
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--model-base-path",
                             base, "--model-name", name, "--port", str(port),
                             "--poll-seconds", "30", *extra],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    apis = protos.load_apis()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = apis.model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = apis.get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = name
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"graft serve exited:\n{Path(log_path).read_text()}")
            try:
                status = stub.GetModelStatus(status_request, timeout=2)
                available = [s.version for s in status.model_version_status if s.state == 30]
                if available:
                    return proc, max(available)
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    finally:
        channel.close()
    proc.kill()
    raise SystemExit(f"graft serve did not come up:\n{Path(log_path).read_text()}")


def served_model(model_base_path, model_name, workdir: str, doing: str) -> tuple:
    """(base path, model name, is the toy model) of a serving benchmark: SERVING_DIR/NAME when
    given, else the toy model (tests/toy_model.py) pushed into WORKDIR, said out loud."""
    if model_base_path:
        base = os.path.abspath(model_base_path)
        return base, model_name or os.path.basename(base.rstrip("/")), False
    from tests import toy_model
    base = os.path.join(workdir, "toy")
    toy_model.push(base, 1)
    print(f"no --model-base-path given: {doing} the TOY model ({base}), not graft's")
    return base, "toy", True
