"""DataGate's checks on statistics/anomalies: each problem named in the message."""
from __future__ import annotations

from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

from components.custom.data_gate import problems_in_split


def _stats(n=10, image_present=10, label_min=0, label_max=2, with_image=True,
           image_stats="bytes_stats"):
    """image_stats: bytes_stats as StatisticsGen writes them with pipeline.statistics_options,
    string_stats as TFDV writes them without."""
    s = statistics_pb2.DatasetFeatureStatistics(num_examples=n)
    if with_image:
        f = s.features.add()
        f.path.step.append("image")
        getattr(f, image_stats).common_stats.num_non_missing = image_present
    f = s.features.add()
    f.path.step.append("label")
    f.num_stats.common_stats.num_non_missing = n
    f.num_stats.min = label_min
    f.num_stats.max = label_max
    return s


def test_clean_split_has_no_problems():
    assert problems_in_split("train", _stats(), anomalies_pb2.Anomalies(), "image", "label",
                             3) == []


def test_label_outside_vocabulary_is_named():
    p = problems_in_split("eval", _stats(label_max=7), anomalies_pb2.Anomalies(), "image",
                          "label", 3)
    assert len(p) == 1 and "eval" in p[0] and "[0, 7]" in p[0] and "3 classes" in p[0]


def test_missing_image_bytes_and_empty_split():
    for kind in ("bytes_stats", "string_stats"):
        p = problems_in_split("train", _stats(image_present=7, image_stats=kind),
                              anomalies_pb2.Anomalies(), "image", "label", 3)
        assert p == ["train: 3 of 10 examples have no image bytes under 'image'"], kind
    p = problems_in_split("train", _stats(n=0), anomalies_pb2.Anomalies(), "image", "label", 3)
    assert p == ["train: the split is empty"]


def test_wrong_image_key_lists_present_features():
    p = problems_in_split("train", _stats(with_image=False), anomalies_pb2.Anomalies(),
                          "image", "label", 3)
    assert "no feature 'image'" in p[0] and "label" in p[0] and "--image-key" in p[0]


def test_schema_anomaly_is_reported():
    a = anomalies_pb2.Anomalies()
    a.anomaly_info["label"].description = "Unexpected data type"
    p = problems_in_split("eval", _stats(), a, "image", "label", 3)
    assert p == ["eval: feature 'label': Unexpected data type"]
