"""DataGate: stops the run before Transform/Trainer when the data is unusable.

Reads ExampleValidator's anomalies and StatisticsGen's statistics and fails with one
message that names every problem: schema anomalies, an empty split, missing image bytes,
labels outside the vocabulary. The checks are plain functions (`find_problems`) so they are
tested without a pipeline.
"""

import os

import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.types import artifact_utils


class DataProblem(RuntimeError):
    """The input data cannot be trained on; the message says why."""


def _feature(stats, name):
    for f in stats.features:
        if f.path.step and f.path.step[0] == name or f.name == name:
            return f
    return None


def problems_in_split(split: str, stats, anomalies, image_key: str, label_key: str,
                      num_classes: int) -> list[str]:
    problems = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        problems.append("%s: feature '%s': %s" % (split, feature, info.description or
                                                 info.short_description))
    if anomalies.HasField("dataset_anomaly_info"):
        problems.append("%s: %s" % (split, anomalies.dataset_anomaly_info.description))
    n = stats.num_examples
    if n == 0:
        return problems + ["%s: the split is empty" % split]
    names = sorted(f.path.step[0] if f.path.step else f.name for f in stats.features)
    image = _feature(stats, image_key)
    if image is None:
        problems.append("%s: no feature '%s' (the image bytes); features present: %s; set "
                        "--image-key" % (split, image_key, names))
    else:
        # bytes_stats: StatisticsGen's options declare the image feature BYTES
        # (pipeline.statistics_options); string_stats without them.
        common = getattr(image, image.WhichOneof("stats") or "bytes_stats").common_stats
        missing = n - common.num_non_missing
        if missing > 0:
            problems.append("%s: %d of %d examples have no image bytes under '%s'"
                            % (split, missing, n, image_key))
    label = _feature(stats, label_key)
    if label is None:
        problems.append("%s: no feature '%s' (the label); features present: %s; set "
                        "--label-key" % (split, label_key, names))
    else:
        ns = label.num_stats
        missing = n - ns.common_stats.num_non_missing
        if missing > 0:
            problems.append("%s: %d of %d examples have no label" % (split, missing, n))
        if ns.min < 0 or ns.max > num_classes - 1:
            problems.append("%s: labels range over [%g, %g] but the vocabulary has %d classes "
                            "(0..%d)" % (split, ns.min, ns.max, num_classes, num_classes - 1))
    return problems


def find_problems(statistics_uri: str, anomalies_uri: str, splits: list[str], image_key: str,
                  label_key: str, num_classes: int) -> list[str]:
    problems = []
    for split in splits:
        stats_list = tfdv.load_stats_binary(
            os.path.join(statistics_uri, "Split-%s" % split, "FeatureStats.pb"))
        stats = stats_list.datasets[0]
        anomalies_path = os.path.join(anomalies_uri, "Split-%s" % split, "SchemaDiff.pb")
        with tf.io.gfile.GFile(anomalies_path, "rb") as f:
            anomalies = anomalies_pb2.Anomalies.FromString(f.read())
        problems += problems_in_split(split, stats, anomalies, image_key, label_key,
                                      num_classes)
    return problems


@tfx.dsl.components.component
def DataGate(
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    image_key: tfx.dsl.components.Parameter[str],
    label_key: tfx.dsl.components.Parameter[str],
    num_classes: tfx.dsl.components.Parameter[int],
) -> tfx.dsl.components.OutputDict(examples_ok=int):
    splits = artifact_utils.decode_split_names(statistics.split_names)
    problems = find_problems(statistics.uri, anomalies.uri, splits, image_key, label_key,
                             num_classes)
    if problems:
        raise DataProblem("the data cannot be trained on:\n  - " + "\n  - ".join(problems))
    return {"examples_ok": 1}
