"""Benchmarks of graft and their results (bench/results/*.json).

A package so that every script imports the same way (`from bench import common`,
`from components ...`) and none puts bench/ on sys.path (where a bench module could shadow a
top-level package: bench/serving.py once shadowed `serving`, hence bench/serving_load.py).
Run each from the repository root as a module:

    .venv/bin/python -m bench.<name> [--help]
"""
