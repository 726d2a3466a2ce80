"""`graft serve` / `graft predict` flags that bound a request's cost or set up TLS, and their
defaults; light to import (pipeline/cli.py builds its parser from these).

The defaults keep `graft serve` of an EfficientNet-Lite0 model under 1.5 GB RSS under any mix
of requests (bench/abuse.py measures it): 16 M decoded pixels (a 16 MP photo) per image,
per request and in flight over all running requests together (Lite0's preprocessing holds
about 15 bytes per decoded pixel at its peak: uint8 decode, float32 cast), each batch element
counted as at least 600 K pixels in flight (Lite0's activations at 224x224, ~9 MB), batches of
at most 32, 8 MiB per request, at most 12 requests in the server (a waiting request holds
only its message) and 4 of them running the model.
"""
from __future__ import annotations

import argparse
import os

MAX_BATCH = int(os.environ.get("GRAFT_SERVE_MAX_BATCH") or 32)
MAX_IMAGE_PIXELS = 16_000_000
MAX_REQUEST_PIXELS = 16_000_000
MAX_PIXELS_IN_FLIGHT = 16_000_000
PIXELS_PER_ELEMENT = 600_000
MAX_REQUEST_BYTES = 8 << 20
MAX_TENSOR_ELEMENTS = 1 << 22
MAX_CONCURRENT_REQUESTS = 12
MAX_CONCURRENT_RUNS = 4
QUEUE_TIMEOUT = 5.0


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """Limits and TLS flags of `graft serve`."""
    p.add_argument("--max-batch", type=int, default=MAX_BATCH,
                   help="largest batch (leading dimension) of a request; default "
                        f"{MAX_BATCH} (GRAFT_SERVE_MAX_BATCH)")
    p.add_argument("--max-image-pixels", type=int, default=MAX_IMAGE_PIXELS,
                   help="reject an image that decodes to more pixels than this, width x "
                        f"height x frames (default {MAX_IMAGE_PIXELS:_})")
    p.add_argument("--max-request-pixels", type=int, default=MAX_REQUEST_PIXELS,
                   help="reject a request whose images decode to more pixels than this in "
                        f"total (default {MAX_REQUEST_PIXELS:_})")
    p.add_argument("--max-pixels-in-flight", type=int, default=MAX_PIXELS_IN_FLIGHT,
                   help="decoded pixels of all running requests together; a request that "
                        f"would go over waits (default {MAX_PIXELS_IN_FLIGHT:_})")
    p.add_argument("--pixels-per-element", type=int, default=PIXELS_PER_ELEMENT,
                   help="what one batch element counts as at least in --max-pixels-in-flight "
                        "(the model's activations per element; default "
                        f"{PIXELS_PER_ELEMENT:_}, about Lite0 at 224x224)")
    p.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES,
                   help="largest request message, and largest total size of its inputs once "
                        f"expanded to their declared shapes (default {MAX_REQUEST_BYTES:_})")
    p.add_argument("--max-tensor-elements", type=int, default=MAX_TENSOR_ELEMENTS,
                   help="most elements the inputs of one request may declare "
                        f"(default {MAX_TENSOR_ELEMENTS:_})")
    p.add_argument("--max-concurrent-requests", type=int, default=MAX_CONCURRENT_REQUESTS,
                   help="calls in the server at once, running or waiting; more get "
                        f"RESOURCE_EXHAUSTED (default {MAX_CONCURRENT_REQUESTS})")
    p.add_argument("--max-concurrent-runs", type=int, default=MAX_CONCURRENT_RUNS,
                   help=f"requests running the model at once (default {MAX_CONCURRENT_RUNS})")
    p.add_argument("--queue-timeout", type=float, default=QUEUE_TIMEOUT,
                   help="seconds a request may wait to run before RESOURCE_EXHAUSTED "
                        f"(default {QUEUE_TIMEOUT:g})")
    p.add_argument("--tls-cert", default=None, metavar="PEM",
                   help="certificate chain: the port speaks TLS only (needs --tls-key)")
    p.add_argument("--tls-key", default=None, metavar="PEM", help="private key of --tls-cert")


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    """TLS flags of `graft predict`."""
    p.add_argument("--tls", action="store_true",
                   help="connect with TLS, trusting the system's root certificates")
    p.add_argument("--tls-ca", default=None, metavar="PEM",
                   help="connect with TLS, trusting this CA (or self-signed) certificate")
    p.add_argument("--tls-server-name", default=None, metavar="NAME",
                   help="the name the server's certificate must hold (default: the host of "
                        "--server)")
