"""Serving benchmark: `graft serve` under 1, 4 and 8 concurrent gRPC clients on loopback.

    .venv/bin/python -m bench.serving_load [--model-base-path SERVING_DIR/NAME] [--seconds 60]

Starts `graft serve` in a subprocess, sends single-image Predict requests (real JPEGs from
../shared/data/flowers-dev, rotated; request protos built up front) from client threads for
--seconds each, and reports requests/s, p50/p99 latency and errors. Then, with the server
stopped, it times the same `serving_default` signature in process on the same single-image
batches, for the ratio of served to in-process p50 latency. Without --model-base-path it
benchmarks the toy model (tests/toy_model.py) and says so. Writes bench/results/serving.json
(or --out) and prints a markdown table. Skips (exit 0) when the flowers data is absent.
Client threads and the server share the machine's cores, so the numbers include the client.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import sys
import tempfile
import threading
import time

from bench import common


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_images(count: int) -> list[tuple[str, bytes]]:
    paths = sorted(common.FLOWERS.glob("*/*.jpg"))
    step = max(1, len(paths) // count)
    return [(str(p), p.read_bytes()) for p in paths[::step][:count]]


def run_clients(port: int, requests: list, clients: int, seconds: float) -> dict:
    import grpc

    from serving import protos
    apis = protos.load_apis()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    messages: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(k: int):
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = apis.prediction_service_pb2_grpc.PredictionServiceStub(channel)
        i = k
        start.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            try:
                stub.Predict(requests[i % len(requests)], timeout=60)
                latencies[k].append(time.perf_counter() - t0)
            except grpc.RpcError as e:
                errors[k] += 1
                if len(messages) < 3:
                    messages.append(f"{e.code().name}: {e.details()}")
            i += clients
        channel.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.monotonic()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    flat = [x for lat in latencies for x in lat]
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(flat),
            "requests_per_s": round(len(flat) / elapsed, 2), "p50_ms": _ms(_percentile(flat, 50)),
            "p99_ms": _ms(_percentile(flat, 99)), "errors": sum(errors),
            "error_samples": messages}


def in_process(version_dir: str, images: list[bytes], seconds: float) -> dict:
    import tensorflow as tf
    fn = tf.saved_model.load(version_dir).signatures["serving_default"]
    batches = [tf.constant([data]) for data in images]
    for batch in batches[:3]:
        fn(image_bytes=batch)
    times, i = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(times) < 20:
        t0 = time.perf_counter()
        out = fn(image_bytes=batches[i % len(batches)])
        out["probabilities"].numpy()
        times.append(time.perf_counter() - t0)
        i += 1
    return {"calls": len(times), "p50_ms": _ms(_percentile(times, 50)),
            "p99_ms": _ms(_percentile(times, 99))}


def markdown(result: dict) -> str:
    rows = ["| clients | requests/s | p50 ms | p99 ms | errors |", "|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        rows.append(f"| {r['clients']} | {r['requests_per_s']} | {r['p50_ms']} | {r['p99_ms']} "
                    f"| {r['errors']} |")
    ip = result["in_process"]
    rows.append(f"| in-process (1 image) | - | {ip['p50_ms']} | {ip['p99_ms']} | - |")
    return "\n".join(rows) + (f"\n\nserved/in-process p50 ratio (1 client): "
                              f"{result['p50_ratio_1_client']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-base-path", default=None,
                        help="SERVING_DIR/NAME of a pushed graft model (default: the toy model)")
    parser.add_argument("--model-name", default=None, help="default: basename of the base path")
    parser.add_argument("--seconds", type=float, default=60.0, help="per concurrency level")
    parser.add_argument("--clients", default="1,4,8", help="comma-separated (default 1,4,8)")
    parser.add_argument("--images", type=int, default=32, help="distinct JPEGs to rotate")
    parser.add_argument("--serve-args", default="",
                        help="extra `graft serve` flags, e.g. \"--max-concurrent-runs 8\"")
    parser.add_argument("--out", default=str(common.RESULTS / "serving.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    if not common.FLOWERS.is_dir():
        print(f"skipped: {common.FLOWERS} is absent (needs ../shared/data/flowers-dev)")
        return 0
    workdir = tempfile.mkdtemp(prefix="graft-bench-serving-")
    base, name, toy = common.served_model(args.model_base_path, args.model_name, workdir,
                                          "benchmarking")

    from serving import client as client_lib
    images = load_images(args.images)
    requests = [client_lib.build_request(data, name) for _, data in images]
    port = _free_port()
    log_path = os.path.join(workdir, "server.log")
    proc, version = common.start_server(base, name, port, log_path, args.serve_args.split())
    print(f"graft serve: model {name} version {version} on 127.0.0.1:{port}")
    runs = []
    try:
        run_clients(port, requests, 1, min(2.0, args.seconds))      # warm-up, not reported
        for clients in (int(c) for c in args.clients.split(",")):
            run = run_clients(port, requests, clients, args.seconds)
            print(f"  {clients} client(s): {run['requests_per_s']} req/s, p50 {run['p50_ms']} "
                  f"ms, p99 {run['p99_ms']} ms, {run['errors']} errors", flush=True)
            runs.append(run)
    finally:
        proc.terminate()
        proc.wait(60)
    ip = in_process(os.path.join(base, str(version)), [d for _, d in images],
                    min(args.seconds, 10.0))
    shutil.rmtree(workdir, ignore_errors=True)
    one = next((r for r in runs if r["clients"] == 1), None)
    ratio = (round(one["p50_ms"] / ip["p50_ms"], 3)
             if one and one["p50_ms"] and ip["p50_ms"] else None)
    result = {
        "model": name, "version": version, "model_base_path": base, "toy_model": toy,
        "images": len(images), "image_source": str(common.FLOWERS),
        "seconds_per_level": args.seconds, "serve_args": args.serve_args,
        "cpu_count": os.cpu_count(), "runs": runs, "in_process": ip,
        "p50_ratio_1_client": ratio,
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    common.write_json(os.path.abspath(args.out), result)
    print()
    if toy:
        print("(toy model, not graft's)")
    print(markdown(result))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
