"""Forward speed of the EfficientNet-Lite0 feature extractor (224 px, batch 32, CPU), and
the speed of one phase-2 training step (whole batch vs micro-batches of 16).

Builds the base with the offline ImageNet weights, runs warm-up batches, then times
batches of random preprocessed images; prints the result and writes
bench/results/lite0_forward.json (images/s plus machine: nproc, CPU model, TF version).
Usage: .venv/bin/python -m bench.lite0_forward [--batches N] [--warmup N] [--batch-size N]
           [--policy mixed_bfloat16 --out bench/results/lite0_forward_bf16.json]
(--policy: the Keras precision policy of both measurements; the Trainer uses float32 on CPU.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def train_step_ms(bb, args, micro: int) -> float:
    """Milliseconds per image of one phase-2 training step (the Trainer's model and optimizer,
    every layer trainable) in slices of `micro` images (0: the whole batch)."""
    import numpy as np
    import tf_keras

    from components import model as model_lib
    from components.training_config import TrainingConfig

    tf_keras.backend.clear_session()
    cfg = TrainingConfig(label_names=tuple("abcde"), image_size=args.size)
    classifier = model_lib.build(bb, cfg)
    model_lib.unfreeze_top(classifier.base, len(classifier.base.layers))
    fitted = model_lib.micro_batched(classifier.model, micro, args.batch_size)
    model_lib.compile_for(fitted, model_lib.optimizer(
        cfg.fine_tune_optimizer, cfg.fine_tune_learning_rate, cfg.weight_decay), cfg)
    rng = np.random.default_rng(0)
    x = bb.preprocess(rng.uniform(0, 255, (args.batch_size, args.size, args.size, 3))
                      .astype(np.float32))
    y = rng.integers(0, cfg.num_classes, args.batch_size)
    for _ in range(2):
        fitted.train_on_batch(x, y)
    t0 = time.perf_counter()
    steps = max(3, args.batches // 2)
    for _ in range(steps):
        fitted.train_on_batch(x, y)
    return round(1000 * (time.perf_counter() - t0) / steps / args.batch_size, 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--policy", default="float32", choices=("float32", "mixed_bfloat16"),
                   help="Keras precision policy (mixed_bfloat16: bf16 compute, float32 "
                   "variables)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "lite0_forward.json"))
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf
    import tf_keras

    from components.backbones import get_backbone

    tf_keras.mixed_precision.set_global_policy(args.policy)
    bb = get_backbone("efficientnet_lite0")
    model = bb.build_base(weights="imagenet", image_size=args.size)
    forward = tf.function(lambda x: model(x, training=False), jit_compile=False)
    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(0)
    x = bb.preprocess(rng.uniform(0, 255, (args.batch_size, args.size, args.size, 3))
                      .astype(np.float32))
    for _ in range(args.warmup):
        forward(x).numpy()
    times = []
    for _ in range(args.batches):
        t0 = time.perf_counter()
        forward(x).numpy()
        times.append(time.perf_counter() - t0)
    total = sum(times)
    train_steps = {str(micro): train_step_ms(bb, args, micro) for micro in (16, 0)}
    result = {
        "model": "efficientnet_lite0 feature extractor (include_top=False)",
        "image_size": args.size,
        "batch_size": args.batch_size,
        "policy": args.policy,
        "warmup_batches": args.warmup,
        "timed_batches": args.batches,
        "images_per_second": round(args.batch_size * args.batches / total, 2),
        "median_batch_seconds": round(statistics.median(times), 4),
        "min_batch_seconds": round(min(times), 4),
        "output_shape": list(model.output_shape[1:]),
        "train_step_ms_per_image": train_steps,
        "train_step_note": "phase 2's full fine-tune (every layer but BatchNorm trainable, "
                           "AdamW, label smoothing) on the same random batch, keyed by "
                           "micro_batch_size (0 = the whole batch at once)",
        "machine": {
            "nproc": os.cpu_count(),
            "cpu_model": cpu_model(),
            "tensorflow": tf.__version__,
            "python": platform.python_version(),
            "loadavg_1min_before": round(load_before, 2),
            "loadavg_1min_after": round(os.getloadavg()[0], 2),
        },
        "note": "the 1-minute load average before and after says whether the machine was "
                "quiet",
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    os.replace(args.out + ".tmp", args.out)
    print(f"efficientnet_lite0 features @{args.size}px batch {args.batch_size} {args.policy}: "
          f"{result['images_per_second']} images/s "
          f"(median {result['median_batch_seconds']} s/batch, {os.cpu_count()} CPUs, "
          f"{result['machine']['cpu_model']}, TF {tf.__version__})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
