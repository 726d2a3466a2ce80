"""create_pipeline(): the graft TFX DAG, pure (no I/O), shared by every runner.

ImportExampleGen -> ImageCheck (drops records whose image does not decode) ->
span window (SpanRangeStrategy) [-> SpanMerge when num_spans > 1] -> StatisticsGen ->
SchemaGen -> ExampleValidator -> DataGate -> Transform (materialize=False) -> Trainer ->
latest blessed model other than the candidate (pipeline/baseline.py) -> Evaluator ->
VersionedPusher -> TFLiteExport (unless config.tflite == 'none').

Splits: train/eval/test (test only when config.test_pattern is set). The Trainer reads train
and eval (early stopping and the phase choice); the Evaluator gates on config.gate_split
(test, or eval when the data has no test split); data validation covers every split of the
window.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx import v1 as tfx
from tfx.proto import range_config_pb2

from components.custom.data_gate import DataGate
from components.custom.image_check import ImageCheck
from components.custom.pusher import VersionedPusher
from components.custom.span_merge import SpanMerge
from components.custom.tflite_export import TFLiteExport
from pipeline.baseline import LatestBlessedOtherModelStrategy
from pipeline.configs import COMPONENTS_DIR, PipelineConfig

TRANSFORM_MODULE = os.path.join(COMPONENTS_DIR, "transform.py")
TRAINER_MODULE = os.path.join(COMPONENTS_DIR, "trainer.py")
# The same functions by import path (create_pipeline(module_files=False)).
TRANSFORM_FN = "components.transform.preprocessing_fn"
TRAINER_FN = "components.trainer.run_fn"


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    """Accuracy floor AND not worse than the baseline by more than max_regression (both
    fractions, on the gating split: test, else eval); per-class recall; confusion matrix."""
    accuracy = tfma.MetricConfig(
        class_name="SparseCategoricalAccuracy",
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": config.min_accuracy}),
            change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                absolute={"value": -config.max_regression - 1e-10})))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            # Said, not detected: TFMA detects a model's type by loading it once more (half
            # of the Evaluator's time on flowers-dev, profiled).
            model_type=tfma.TF_KERAS,
            signature_name="serve_tf_examples",
            preprocessing_function_names=["transform_features"],
            label_key=config.training.label_key,
            prediction_key="probabilities")],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[
            tfma.MetricsSpec(metrics=[
                tfma.MetricConfig(class_name="ExampleCount"),
                accuracy,
                tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
            ]),
            tfma.MetricsSpec(
                metrics=[tfma.MetricConfig(class_name="Recall")],
                binarize=tfma.BinarizationOptions(
                    class_ids={"values": list(range(config.training.num_classes))})),
        ])


def statistics_options(image_key: str) -> tfdv.StatsOptions:
    """StatisticsGen's options: the image feature declared BYTES with an image domain, so TFDV
    reports its presence and sizes (bytes_stats) instead of counting the top values and
    uniques of every encoded image (string_stats of placeholders): on flowers-dev's 1,000
    photos 1.2-1.4 s instead of 2.0-2.1 s (tfdv.generate_statistics_from_tfrecord, in memory).
    SchemaGen infers the same schema either way."""
    feature = schema_pb2.Feature(name=image_key, type=schema_pb2.BYTES,
                                 image_domain=schema_pb2.ImageDomain())
    return tfdv.StatsOptions(schema=schema_pb2.Schema(feature=[feature]))


def create_pipeline(config: PipelineConfig, beam_pipeline_args: Optional[list] = None,
                    metadata_connection_config=None,
                    trainer_platform_config=None,
                    span_window: bool = True, baseline: bool = True,
                    baseline_skips_candidate: bool = True,
                    module_files: bool = True) -> tfx.dsl.Pipeline:
    """The DAG. For Kubeflow (pipeline/kubeflow/compile.py): span_window=False feeds
    ExampleGen's latest span straight to Transform, Trainer and Evaluator (the same data when
    num_spans == 1; TFX's KubeflowV2 compiler has no SpanRangeStrategy); baseline=False drops
    the latest-blessed-model resolver (open-source KFP runs no resolver), so the blessing is
    the accuracy floor alone; baseline_skips_candidate=False uses TFX's stock
    LatestBlessedModelStrategy (the only one the Vertex compiler takes), which may compare an
    unchanged rerun's model with itself. ImageCheck fails the run when more than
    config.max_bad_image_fraction of a split has images that do not decode.
    module_files=False names the Transform and Trainer functions by import path (TFX's
    documented `preprocessing_fn` / `run_fn` parameters) instead of module files, so TFX builds
    no user-code wheel and pip-installs none in the components: the local runner, where the
    components import the installed graft package; there config.training.code_version (which
    then hashes components/) stands in for the wheel's hash in the cache key."""
    input_config = tfx.proto.Input(splits=[
        tfx.proto.Input.Split(name=name, pattern=pattern) for name, pattern in (
            ("train", config.train_pattern), ("eval", config.eval_pattern),
            ("test", config.test_pattern)) if pattern])
    example_gen = tfx.components.ImportExampleGen(input_base=config.data_dir,
                                                  input_config=input_config)
    training = config.training
    image_check = ImageCheck(examples=example_gen.outputs["examples"],
                             image_key=training.image_key, label_key=training.label_key,
                             max_bad_fraction=config.max_bad_image_fraction)
    checked = image_check.outputs["cleaned_examples"]  # every reader below uses these
    if span_window:
        # Every ImageCheck output of this pipeline, not `checked`: a channel of a node's
        # outputs holds only this run's artifact (TFX scopes it to the pipeline run), which
        # is the latest span alone, so a window of K spans would never see the earlier ones.
        all_checked = tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples,
                                      producer_component_id=image_check.id,
                                      output_key="cleaned_examples")
        span_resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.SpanRangeStrategy,
            config={"range_config": range_config_pb2.RangeConfig(
                rolling_range=range_config_pb2.RollingRange(num_spans=config.num_spans))},
            examples=all_checked).with_id("span_window")
        span_resolver.add_upstream_node(image_check)  # after this run's ImageCheck
        examples = span_resolver.outputs["examples"]
    elif config.num_spans != 1:
        raise ValueError("num_spans=%d needs the span_window resolver" % config.num_spans)
    else:
        span_resolver = None
        examples = checked

    # Data validation sees what Transform, Trainer and Evaluator read: every split of every
    # span of the window (StatisticsGen reads one artifact, hence SpanMerge when K > 1).
    span_merge = (SpanMerge(examples=examples) if span_window and config.num_spans > 1
                  else None)
    statistics_gen = tfx.components.StatisticsGen(
        examples=span_merge.outputs["merged_examples"] if span_merge else examples,
        stats_options=statistics_options(training.image_key))
    schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                          infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    data_gate = DataGate(statistics=statistics_gen.outputs["statistics"],
                         anomalies=example_validator.outputs["anomalies"],
                         image_key=training.image_key, label_key=training.label_key,
                         num_classes=training.num_classes)

    custom_config = training.to_custom_config()
    transform = tfx.components.Transform(
        examples=examples, schema=schema_gen.outputs["schema"],
        **({"module_file": TRANSFORM_MODULE} if module_files else
           {"preprocessing_fn": TRANSFORM_FN}),
        materialize=False, disable_statistics=True, custom_config=custom_config)
    transform.add_upstream_node(data_gate)

    # Named explicitly: the test split must never reach training or early stopping.
    trainer = tfx.components.Trainer(
        **({"module_file": TRAINER_MODULE} if module_files else {"run_fn": TRAINER_FN}),
        examples=examples,
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"], custom_config=custom_config,
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=["eval"]))
    if trainer_platform_config is not None:
        trainer = trainer.with_platform_config(trainer_platform_config)

    # The baseline: the latest blessed model other than this run's candidate (an unchanged
    # rerun then finds the Evaluator's inputs unchanged: cached, seconds).
    candidate = {"candidate": trainer.outputs["model"]} if baseline_skips_candidate else {}
    model_resolver = tfx.dsl.Resolver(
        strategy_class=LatestBlessedOtherModelStrategy if baseline_skips_candidate
        else tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        **candidate,
    ).with_id("latest_blessed_model_resolver") if baseline else None
    evaluator = tfx.components.Evaluator(
        examples=examples, model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"] if baseline else None,
        eval_config=eval_config(config), example_splits=[config.gate_split])

    pusher = VersionedPusher(model=trainer.outputs["model"],
                             model_blessing=evaluator.outputs["blessing"],
                             serving_dir=config.resolved_serving_dir,
                             model_name=config.model_name)

    tflite_export = None if config.tflite == "none" else TFLiteExport(
        model=trainer.outputs["model"], examples=checked,
        model_blessing=evaluator.outputs["blessing"], pushed_model=pusher.outputs["pushed_model"],
        training_config=json.dumps(custom_config), tflite_format=config.tflite,
        max_drop=config.tflite_max_drop, serving_dir=config.resolved_serving_dir,
        model_name=config.model_name)

    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=[c for c in (example_gen, image_check, span_resolver, span_merge,
                                statistics_gen,
                                schema_gen,
                                example_validator, data_gate, transform, trainer,
                                model_resolver, evaluator, pusher, tflite_export)
                    if c is not None],
        enable_cache=True,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [])
