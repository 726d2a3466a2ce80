"""Serving side of graft: a TF Serving-compatible gRPC dev server and the `graft predict` client.

- `serving.server`: `graft serve`, TF Serving's PredictionService / ModelService over gRPC for
  the versions the Pusher writes under SERVING_DIR/<model_name>/<version>/ (or exec of the real
  `tensorflow_model_server` with `--tf-serving`).
- `serving.client`: `graft predict`, one Predict request per image, top-k output.
- helpers: `protos` (light TF Serving API import, tensor protos by hand, tensor cost from the
  declared shape), `model_store` (version scanning, loading, hot swap), `predict` (request
  validation against the limits, and execution), `images` (cheap per-element image checks:
  header, pixels x frames, truncation), `admission` (run slots, pixel budget, queue timeout),
  `flags` (the limit and TLS flags of `graft serve` / `graft predict`, and their defaults).
  The toy SavedModel that tests and the serving benchmark use is a test fixture:
  tests/toy_model.py. The attacks they must withstand: tests/test_abuse.py, bench/abuse.py.
"""
