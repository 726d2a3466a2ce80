"""What the two resolver nodes see, in the compiled TFX IR: TFX scopes a channel of a node's
outputs to the current pipeline run. The span window must see every span ImageCheck ever
produced (a window of K spans over one run's output is the latest span alone: the bug this
test pins down, found with two real runs on spans 1 and 2), while the baseline resolver's
`candidate` is this run's model only."""
from __future__ import annotations

import argparse


def _ir(*argv):
    from tfx.dsl.compiler import compiler

    from pipeline import configs
    from pipeline.pipeline import create_pipeline

    p = argparse.ArgumentParser()
    configs.add_run_arguments(p)
    config = configs.from_args(p.parse_args(list(argv)), data_dir="/d", label_names=("a", "b"),
                               output_dir="/o")
    ir = compiler.Compiler().compile(create_pipeline(config))
    return {n.pipeline_node.node_info.id: n.pipeline_node for n in ir.nodes}


def _scopes(node, output_key):
    """Context types of every channel of `node` that reads `output_key` (a resolver's inputs
    are compiled into hidden input keys of its input graph)."""
    return [[q.type.name for q in ch.context_queries]
            for spec in node.inputs.inputs.values() for ch in spec.channels
            if ch.output_key == output_key]


def test_span_window_reads_every_run_of_image_check():
    window = _ir("--num-spans", "3")["span_window"]
    assert _scopes(window, "cleaned_examples") == [["pipeline", "node"]]  # no pipeline_run
    assert "ImageCheck" in window.upstream_nodes  # runs after this run's ImageCheck


def test_baseline_candidate_is_this_runs_model_and_the_others_are_all():
    resolver = _ir()["latest_blessed_model_resolver"]
    assert _scopes(resolver, "model") == [["pipeline", "pipeline_run", "node"]]  # candidate
    assert _scopes(resolver, "") == [["pipeline"], ["pipeline"]]  # every Model and blessing
