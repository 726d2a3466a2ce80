"""SpanMerge: the span window (several Examples artifacts) as one Examples artifact.

Why: with `--num-spans K > 1` Transform, Trainer and Evaluator read the last K spans, but
TFX's StatisticsGen reads exactly one Examples artifact, so the data validation
(StatisticsGen -> SchemaGen -> ExampleValidator -> DataGate) would see the newest span only.
The pipeline inserts SpanMerge between the span window and StatisticsGen when K > 1 (with
K = 1 StatisticsGen reads the window's single artifact directly).

`merge_examples()` links (hard link; a copy where the file system cannot link, e.g. GCS)
every file of every split of every input into `Split-<name>/span-<S>-<i>-<file>` of the
output, so nothing is rewritten or decoded. split_names is the union of the inputs' splits;
the `span` custom property is the newest input's, the formats the first input's.
"""

import os
from typing import List

import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact_utils

FORMAT_PROPERTIES = ("payload_format", "file_format")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or not a local path at all
        tf.io.gfile.copy(src, dst, overwrite=True)


def merge_examples(inputs: list, out_uri: str) -> dict:
    """inputs: [(uri, [split names], span)]; writes the merged layout under out_uri and
    returns {split: number of files}."""
    splits = []
    for _, names, _ in inputs:
        splits += [s for s in names if s not in splits]
    counts = {}
    for split in splits:
        dst_dir = os.path.join(out_uri, "Split-%s" % split)
        tf.io.gfile.makedirs(dst_dir)
        counts[split] = 0
        for i, (uri, names, span) in enumerate(inputs):
            if split not in names:
                continue
            src_dir = os.path.join(uri, "Split-%s" % split)
            for name in sorted(tf.io.gfile.listdir(src_dir)):
                name = name.rstrip("/")
                _link_or_copy(os.path.join(src_dir, name),
                              os.path.join(dst_dir, "span-%s-%d-%s" % (span, i, name)))
                counts[split] += 1
    return counts


@tfx.dsl.components.component
def SpanMerge(
    examples: tfx.dsl.components.InputArtifact[List[tfx.types.standard_artifacts.Examples]],
    merged_examples: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Examples],
) -> None:
    def span(a):
        for props in (a.mlmd_artifact.custom_properties, a.mlmd_artifact.properties):
            if "span" in props:
                return props["span"].int_value
        return 0

    ordered = sorted(examples, key=span)
    inputs = [(a.uri, artifact_utils.decode_split_names(a.split_names), span(a))
              for a in ordered]
    counts = merge_examples(inputs, merged_examples.uri)
    merged_examples.split_names = artifact_utils.encode_split_names(list(counts))
    merged_examples.set_int_custom_property("span", span(ordered[-1]))
    merged_examples.set_string_custom_property(
        "merged_spans", ",".join(str(span(a)) for a in ordered))
    for key in FORMAT_PROPERTIES:
        if key in ordered[0].mlmd_artifact.custom_properties:
            merged_examples.mlmd_artifact.custom_properties[key].CopyFrom(
                ordered[0].mlmd_artifact.custom_properties[key])
    print("graft span merge: spans %s -> %s" % (
        ", ".join(str(s) for _, _, s in inputs),
        ", ".join("%s %d files" % kv for kv in counts.items())))
