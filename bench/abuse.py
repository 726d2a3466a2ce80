"""Abuse benchmark: the attacks of the serving hardening issue against `graft serve`.

    .venv/bin/python -m bench.abuse [--model-base-path SERVING_DIR/NAME] [--out FILE]

Starts `graft serve` (default limits, loopback) as a subprocess and runs each attack in turn:
declared-shape bombs, image bombs through every signature that reaches an image decoder (a
20000x20000 PNG and a 400-frame GIF, as raw `image_bytes` and inside tf.Examples for
`serve_tf_examples` / `transform_features`), an oversized message, a broadcast string, a
flood of concurrent calls, calls whose deadline passes, then the heaviest requests the
default limits still allow. Per attack: the gRPC status(es), the server's latency as the
client sees it on loopback, the server's peak RSS during the attack (the kernel's VmHWM, reset
before each attack, plus psutil samples every 20 ms over the whole suite) and whether a normal
one-image request still answers afterwards. Writes bench/results/abuse.json and prints a
markdown table. Without --model-base-path it attacks the toy model (tests/toy_model.py).

The payload builders (`huge_png`, `animated_gif`, `example`, `string_tensor`) are shared with
tests/test_abuse.py.
"""
from __future__ import annotations

import argparse
import datetime
import io
import os
import socket
import struct
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

from bench import common

# ---------------------------------------------------------------------------------------------
# payloads


def huge_png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of width x height zero pixels, built row by row (small file,
    nothing of its decoded size is ever held by the builder)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    parts = []
    for start in range(0, height, 64):
        parts.append(comp.compress(row * min(64, height - start)))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


def animated_gif(width: int, height: int, frames: int) -> bytes:
    """A valid GIF of `frames` full-canvas frames (one frame encoded by PIL, repeated)."""
    from PIL import Image
    buf = io.BytesIO()
    Image.new("P", (width, height), 1).save(buf, format="GIF")
    one = buf.getvalue()
    start = one.index(b"\x2c", 13 + 3 * 2 ** ((one[10] & 7) + 1) if one[10] & 0x80 else 13)
    header, frame = one[:start], one[start:-1]           # drop the trailer
    gce = b"\x21\xf9\x04\x00\x01\x00\x00\x00"             # 10 ms per frame
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"
    return header + loop + (gce + frame) * frames + b"\x3b"


def jpeg(width: int, height: int, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, size=(max(1, height // 64), max(1, width // 64), 3),
                         dtype=np.uint8)
    image = Image.fromarray(small).resize((width, height))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def noise_jpeg(width: int, height: int, seed: int = 0) -> bytes:
    """A JPEG of random pixels: large for its size (about 1.5 bytes per pixel)."""
    import numpy as np
    from PIL import Image
    pixels = np.random.default_rng(seed).integers(0, 255, size=(height, width, 3),
                                                  dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def example(image: bytes, key: str = "image", label: int = 0) -> bytes:
    """A serialized tf.Example with the image bytes under `key` and an int64 label."""
    from serving import protos
    ex = protos.load_apis().example_pb2.Example()
    ex.features.feature[key].bytes_list.value.append(image)
    ex.features.feature["label"].int64_list.value.append(label)
    return ex.SerializeToString()


def string_tensor(values: list[bytes], shape: list[int] | None = None):
    """A DT_STRING TensorProto with `values` and a declared `shape` (default [len(values)])."""
    from serving import protos
    proto = protos.load_apis().tensor_pb2.TensorProto(dtype=7)
    for d in (shape if shape is not None else [len(values)]):
        proto.tensor_shape.dim.add().size = d
    proto.string_val.extend(values)
    return proto


def request(model: str, tensor, key: str = "image_bytes", signature: str = "serving_default",
            version: int | None = None):
    from serving import protos
    req = protos.load_apis().predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    req.inputs[key].CopyFrom(tensor)
    return req


# ---------------------------------------------------------------------------------------------
# server process and memory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm(pid: int) -> int:
    """The process's peak RSS (bytes) since start or the last `reset_hwm`."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (writing 5 to clear_refs); False if not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler:
    """psutil RSS of one process every `interval` seconds; `.peak` in bytes."""

    def __init__(self, pid: int, interval: float = 0.02):
        import psutil
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(self.interval)

    def rss(self) -> int:
        return self.proc.memory_info().rss

    def stop(self):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------------------------
# attacks


def call(stub, req, timeout: float = 60.0) -> tuple[str, float, str]:
    """(status name, seconds, details) of one Predict."""
    import grpc
    t0 = time.perf_counter()
    try:
        stub.Predict(req, timeout=timeout)
        return "OK", time.perf_counter() - t0, ""
    except grpc.RpcError as e:
        return e.code().name, time.perf_counter() - t0, e.details() or ""


def concurrent_calls(port: int, reqs: list, timeout: float) -> list[tuple[str, float, str]]:
    """Send every request at once, one channel and thread each; their (status, s, details)."""
    import grpc

    from serving import protos
    apis = protos.load_apis()
    results: list = [None] * len(reqs)
    barrier = threading.Barrier(len(reqs))

    def one(i: int):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", 64 << 20)])
        stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        grpc.channel_ready_future(channel).result(timeout=30)
        barrier.wait()
        results[i] = call(stub, reqs[i], timeout)
        channel.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def attacks(model: str, signatures: set[str], photo: bytes) -> list[dict]:
    """name, what, expected status, and how to send it (one request, or a `run` callable)."""
    png = huge_png(20000, 20000)
    gif = animated_gif(2000, 2000, 400)
    big = [string_tensor([photo], [100_000_000]), string_tensor([photo], [2 ** 40])]
    out = [
        {"name": "shape_1e8", "what": f"one {len(photo)}-byte image, declared shape [1e8]",
         "expect": "INVALID_ARGUMENT", "request": request(model, big[0])},
        {"name": "shape_2^40", "what": "one image, declared shape [2^40]",
         "expect": "INVALID_ARGUMENT", "request": request(model, big[1])},
        {"name": "string_broadcast", "what": "one 1 MB string broadcast to [32]",
         "expect": "INVALID_ARGUMENT",
         "request": request(model, string_tensor([b"\xff\xd8\xff" + b"\0" * (1 << 20)], [32]))},
        {"name": "png_20000x20000", "what": f"{len(png)}-byte PNG, 20000x20000, image_bytes",
         "expect": "INVALID_ARGUMENT", "request": request(model, string_tensor([png]))},
        {"name": "gif_400_frames", "what": f"{len(gif)}-byte GIF, 2000x2000 x 400 frames",
         "expect": "INVALID_ARGUMENT", "request": request(model, string_tensor([gif]))},
        {"name": "gif_400_frames_x4", "what": "batch of 4 of that GIF",
         "expect": "INVALID_ARGUMENT", "request": request(model, string_tensor([gif] * 4))},
    ]
    for sig in ("serve_tf_examples", "transform_features"):
        if sig not in signatures:
            continue
        out += [
            {"name": f"{sig}_png_20000x20000", "what": "tf.Example holding the 20000x20000 PNG",
             "expect": "INVALID_ARGUMENT",
             "request": request(model, string_tensor([example(png)]), "examples", sig)},
            {"name": f"{sig}_gif_400_frames", "what": "tf.Example holding the 400-frame GIF",
             "expect": "INVALID_ARGUMENT",
             "request": request(model, string_tensor([example(gif)]), "examples", sig)},
        ]
    out += [
        {"name": "message_20MB", "what": "a 20 MiB request (limit 8 MiB)",
         "expect": "RESOURCE_EXHAUSTED",
         "request": request(model, string_tensor([photo, b"\0" * (20 << 20)]))},
        {"name": "jpeg_marker_flood", "what": "7.6 MB of empty JPEG comment markers",
         "expect": "INVALID_ARGUMENT", "request": request(model, string_tensor(
             [photo[:2] + b"\xff\xfe\x00\x02" * 1_900_000 + photo[2:]]))},
        {"name": "unknown_version", "what": "version 999 (message must not show paths)",
         "expect": "NOT_FOUND", "request": request(model, string_tensor([photo]), version=999)},
    ]
    return out


def _row(name, what, expect, statuses, latencies, peak, answers, note=""):
    counts: dict[str, int] = {}
    slowest: dict[str, float] = {}
    for s, t in zip(statuses, latencies):
        counts[s] = counts.get(s, 0) + 1
        slowest[s] = round(max(slowest.get(s, 0.0), t), 3)
    return {"attack": name, "what": what, "expected": expect, "statuses": counts,
            "ok": set(counts) <= set(expect.split("|")),
            "server_latency_s": round(max(latencies), 3) if latencies else None,
            "latency_by_status_s": slowest,
            "server_peak_rss_mb": round(peak / 2 ** 20), "server_still_answers": answers,
            "note": note}


def run_suite(port: int, pid: int, model: str, signatures: set[str], photo: bytes,
              sampler: RssSampler, log=print, server_log: str | None = None) -> list[dict]:
    import grpc

    from serving import protos
    apis = protos.load_apis()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", 64 << 20)])
    stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(channel)
    good = request(model, string_tensor([photo]))
    rows = []

    def not_run() -> int:
        return Path(server_log).read_text().count("Predict not run") if server_log else 0

    def measure(name, what, expect, fn, note=""):
        reset_hwm(pid)
        time.sleep(0.05)
        dropped = not_run()
        results = fn()
        peak = max(vm_hwm(pid), sampler.rss())
        status, seconds, _ = call(stub, good, 30)
        time.sleep(0.2)
        row = _row(name, what, expect, [r[0] for r in results], [r[1] for r in results], peak,
                   status == "OK", note)
        row["next_request_s"] = round(seconds, 3)
        row["calls_not_run_by_the_server"] = not_run() - dropped
        row["details"] = results[0][2][:200]
        rows.append(row)
        log(f"  {name}: {row['statuses']} in {row['server_latency_s']} s, peak RSS "
            f"{row['server_peak_rss_mb']} MB, answers after: {row['server_still_answers']} "
            f"({seconds:.3f} s)  {row['details'][:100]}")

    for attack in attacks(model, signatures, photo):
        measure(attack["name"], attack["what"], attack["expect"],
                lambda a=attack: [call(stub, a["request"], 60)])

    # A flood: 64 calls at once, each a batch of 16 one-megapixel JPEGs.
    batch = request(model, string_tensor([jpeg(1000, 1000, s) for s in range(16)]))
    measure("flood_64_calls", "64 concurrent calls, each 16 x 1 MP JPEGs",
            "OK|RESOURCE_EXHAUSTED", lambda: concurrent_calls(port, [batch] * 64, 120),
            "limits: 16 calls in the server, 4 running")

    # A flood of near-limit messages: what waiting requests hold is bounded too.
    noisy = request(model, string_tensor([noise_jpeg(1200, 1000, s) for s in range(5)]))
    measure("flood_24_calls_7MB", f"24 concurrent calls of {noisy.ByteSize() / 2 ** 20:.1f} "
            "MiB (5 noisy 1200x1000 JPEGs)", "OK|RESOURCE_EXHAUSTED",
            lambda: concurrent_calls(port, [noisy] * 24, 120))

    # Calls whose deadline passes: 8 batches with a 50 ms deadline; then the next call's time.
    measure("expired_deadline_x8", "8 concurrent 16 x 1 MP batches, 50 ms deadline",
            "DEADLINE_EXCEEDED", lambda: concurrent_calls(port, [batch] * 8, 0.05),
            "next_request_s is the one-image call right after")

    # The heaviest requests the default limits allow (not attacks: they must succeed).
    from serving import flags
    side = int(flags.MAX_IMAGE_PIXELS ** 0.5)
    heavy = request(model, string_tensor([jpeg(side, side)]))
    measure("largest_allowed_image", f"one {side}x{side} JPEG ({side * side / 1e6:.0f} M "
            f"pixels, --max-image-pixels {flags.MAX_IMAGE_PIXELS:_})", "OK",
            lambda: [call(stub, heavy, 120)])
    measure("largest_allowed_image_x8", "8 concurrent calls of that JPEG",
            "OK|RESOURCE_EXHAUSTED", lambda: concurrent_calls(port, [heavy] * 8, 120),
            "one at a time fits the pixels-in-flight budget; the rest wait up to 5 s")
    measure("mixed_flood_and_largest", "24 concurrent 7 MiB calls plus 4 of the largest "
            "image at once", "OK|RESOURCE_EXHAUSTED",
            lambda: concurrent_calls(port, [noisy] * 24 + [heavy] * 4, 120))
    small = request(model, string_tensor([jpeg(500, 375, s) for s in range(flags.MAX_BATCH)]))
    measure(f"batch_{flags.MAX_BATCH}", f"a batch of {flags.MAX_BATCH} 500x375 JPEGs (the "
            "batch limit)", "OK", lambda: [call(stub, small, 120)])
    measure(f"batch_{flags.MAX_BATCH}_x4", "4 concurrent calls of that batch",
            "OK|RESOURCE_EXHAUSTED", lambda: concurrent_calls(port, [small] * 4, 120),
            "each element counts 600 K pixels in flight: one batch runs at a time")
    channel.close()
    return rows


def markdown(result: dict) -> str:
    lines = ["| attack | status | server latency s | server peak RSS MB | still answers "
             "(next call) |", "|---|---|---:|---:|---|"]
    for r in result["attacks"]:
        status = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in r["statuses"].items())
        slowest = r["latency_by_status_s"]
        latency = (", ".join(f"{k} {v}" for k, v in slowest.items()) if len(slowest) > 1
                   else r["server_latency_s"])
        lines.append(f"| {r['attack']} | {status} | {latency} | "
                     f"{r['server_peak_rss_mb']} | "
                     f"{'yes' if r['server_still_answers'] else 'NO'} "
                     f"({r['next_request_s']} s) |")
    s = result["summary"]
    lines.append("")
    expired = next((r for r in result["attacks"] if r["attack"].startswith("expired")), None)
    if expired:
        lines.append(f"{expired['attack']}: {expired['calls_not_run_by_the_server']} of the "
                     f"calls were dropped by the server before the model ran.")
    lines.append(f"suite peak RSS {s['suite_peak_rss_mb']} MB (idle after load "
                 f"{s['idle_rss_mb']} MB), server restarts {s['server_restarts']}, "
                 f"all statuses as expected: {s['all_expected']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", default=None,
                        help="SERVING_DIR/NAME of a pushed graft model (default: the toy model)")
    parser.add_argument("--model-name", default=None, help="default: basename of the base path")
    parser.add_argument("--out", default=str(common.RESULTS / "abuse.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    workdir = tempfile.mkdtemp(prefix="graft-bench-abuse-")
    base, name, toy = common.served_model(args.model_base_path, args.model_name, workdir,
                                          "attacking")
    photos = sorted(common.FLOWERS.glob("*/*.jpg")) if common.FLOWERS.is_dir() else []
    photo = photos[0].read_bytes() if photos else jpeg(320, 240)
    port = free_port()
    server_log = os.path.join(workdir, "server.log")
    proc, version = common.start_server(base, name, port, server_log)
    pid = proc.pid
    from tensorflow.core.protobuf import saved_model_pb2
    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString(Path(base, str(version), "saved_model.pb").read_bytes())
    signatures = set(sm.meta_graphs[0].signature_def)
    sampler = RssSampler(pid)
    time.sleep(1.0)
    idle = sampler.rss()
    print(f"graft serve: model {name} version {version} (signatures {sorted(signatures)}), "
          f"idle RSS {idle / 2 ** 20:.0f} MB")
    try:
        rows = run_suite(port, pid, name, signatures, photo, sampler, server_log=server_log)
    finally:
        sampler.stop()
        alive = proc.poll() is None
        proc.terminate()
        proc.wait(60)
    result = {
        "model": name, "version": version, "toy_model": toy, "model_base_path": base,
        "command": "graft serve --model-base-path ... --model-name ... (default limits)",
        "machine": common.machine(), "attacks": rows,
        "summary": {
            "suite_peak_rss_mb": round(max(sampler.peak, max(
                r["server_peak_rss_mb"] for r in rows) * 2 ** 20) / 2 ** 20),
            "idle_rss_mb": round(idle / 2 ** 20),
            "server_restarts": 0 if alive else 1,
            "all_expected": all(r["ok"] and r["server_still_answers"] for r in rows),
            # the slowest answer that was not OK (a refusal), over every attack
            "refusal_latency_max_s": max(t for r in rows for k, t in
                                         r["latency_by_status_s"].items() if k != "OK"),
        },
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    common.write_json(os.path.abspath(args.out), result)
    print()
    print(markdown(result))
    print(f"\nwrote {args.out}")
    return 0 if result["summary"]["all_expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
