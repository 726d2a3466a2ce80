"""The summary's yardstick (pipeline/reporting/pixel_baseline.py): a logistic regression on
raw pixels, fitted on a run's train split and scored on the split the Evaluator gates on."""
from __future__ import annotations

import os
from pathlib import Path

from pipeline import configs
from pipeline.data import demo_dataset
from pipeline.reporting import pixel_baseline


def test_scores_the_gating_split_of_the_span(tmp_path: Path):
    """Fitted on train, scored on test (the split the Evaluator gates on); eval is neither."""
    data = demo_dataset.build(tmp_path / "digits", per_class=20, image_size=32, classes=3,
                              log=lambda *_: None)
    counts = {split: sum(_records(f) for f in (Path(data) / "span-1" / split).iterdir())
              for split in ("train", "test")}
    config = configs.PipelineConfig(data_dir=data, output_dir=str(tmp_path / "out"))
    assert config.gate_split == "test"
    result = pixel_baseline.for_run(config, 1)
    assert "reused" not in result
    assert (result["train"], result["eval"]) == (counts["train"], counts["test"])
    assert result["eval"] >= 3
    assert result["split"] == "test" and result["size"] == 32
    # Digits on raw pixels are easy: far above chance (1/3).
    assert result["accuracy"] >= 0.8, result
    line = pixel_baseline.summary_line(result, 0.5)
    assert "test accuracy %.4f" % result["accuracy"] in line
    assert "%+.1f points" % (100 * (0.5 - result["accuracy"])) in line
    # A rerun on the same files reuses the fit; a rewritten training file is fitted again.
    again = pixel_baseline.for_run(config, 1)
    assert again.pop("reused") is True and again == result
    train_file = next((Path(data) / "span-1" / "train").iterdir())
    content = train_file.read_bytes()
    train_file.write_bytes(content)
    os.utime(train_file, ns=(1, 1))
    assert "reused" not in pixel_baseline.for_run(config, 1)


def _records(path: Path) -> int:
    import tensorflow as tf
    return sum(1 for _ in tf.data.TFRecordDataset(str(path)))


def test_skips_records_that_do_not_decode(tmp_path: Path):
    import tensorflow as tf

    path = str(tmp_path / "x.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for data, label in ((b"not an image", 0), (b"", 1)):
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            })).SerializeToString())
    x, y = pixel_baseline.load([path], "image", "label")
    assert x.shape == (0, 32 * 32 * 3) and len(y) == 0
