"""Which split gates the push: the pipeline's wiring (ImportExampleGen reads train/eval/test,
the Trainer only train and eval, the Evaluator the test split) and the local runner's choice
of the test split or the eval split with a note (pipeline/data/splits.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pipeline import configs
from pipeline.data import splits


def _config(data_dir="/d", *argv):
    p = argparse.ArgumentParser()
    configs.add_run_arguments(p)
    return configs.from_args(p.parse_args(list(argv)), data_dir=str(data_dir),
                             label_names=("a", "b"), output_dir="/o")


def _components(config):
    from pipeline.pipeline import create_pipeline
    return {c.id: c for c in create_pipeline(config).components}


def test_gate_reads_test_and_the_trainer_never_does():
    import json

    nodes = _components(_config())
    split_names = [s["name"] for s in json.loads(
        nodes["ImportExampleGen"].exec_properties["input_config"])["splits"]]
    assert split_names == ["train", "eval", "test"]
    assert json.loads(nodes["Evaluator"].exec_properties["example_splits"]) == ["test"]
    trainer = nodes["Trainer"].exec_properties
    assert json.loads(trainer["train_args"])["splits"] == ["train"]
    assert json.loads(trainer["eval_args"])["splits"] == ["eval"]


def test_without_a_test_split_the_gate_reads_eval():
    import json

    config = _config("/d", "--test-pattern", "")
    assert config.gate_split == "eval"
    nodes = _components(config)
    assert [s["name"] for s in json.loads(
        nodes["ImportExampleGen"].exec_properties["input_config"])["splits"]] == ["train",
                                                                                  "eval"]
    assert json.loads(nodes["Evaluator"].exec_properties["example_splits"]) == ["eval"]


def test_data_validation_reads_the_span_window():
    one = _components(_config())
    # num_spans 1: StatisticsGen reads the window's single artifact, as Transform does.
    assert one["StatisticsGen"].inputs["examples"].producer_component_id == "span_window"
    assert one["Transform"].inputs["examples"].producer_component_id == "span_window"
    two = _components(_config("/d", "--num-spans", "2"))
    assert two["SpanMerge"].inputs["examples"].producer_component_id == "span_window"
    assert two["StatisticsGen"].inputs["examples"].producer_component_id == "SpanMerge"


def _span(root: Path, span: int, names=("train", "eval", "test")):
    for name in names:
        d = root / ("span-%d" % span) / name
        d.mkdir(parents=True)
        (d / "data-00000-of-00001.tfrecord").write_bytes(b"x")


def test_resolve_keeps_test_when_every_span_read_has_it(tmp_path):
    _span(tmp_path, 1, ("train", "eval"))
    _span(tmp_path, 2)
    config, note = splits.resolve(_config(tmp_path))
    assert config.test_pattern == "span-{SPAN}/test/*" and config.gate_split == "test"
    assert note is None
    # A window of two spans where span 1 has no test split: eval, and a note.
    config, note = splits.resolve(_config(tmp_path, "--num-spans", "2"))
    assert config.test_pattern == "" and config.gate_split == "eval"
    assert "no test split in the data (span-{SPAN}/test/*" in note


def test_resolve_falls_back_to_eval_with_a_note(tmp_path):
    _span(tmp_path, 1, ("train", "eval"))
    config, note = splits.resolve(_config(tmp_path))
    assert config.gate_split == "eval" and "the gate scores the eval split" in note
    # Patterns without {SPAN} (one file per split) need only a file for the test pattern.
    (tmp_path / "train.tfrecord").write_bytes(b"x")
    (tmp_path / "test.tfrecord").write_bytes(b"x")
    flat = ["--train-pattern", "train.tfrecord", "--eval-pattern", "test.tfrecord"]
    config, note = splits.resolve(_config(tmp_path, *flat, "--test-pattern", "test.tfrecord"))
    assert config.gate_split == "test" and note is None
    config, note = splits.resolve(_config(tmp_path, *flat, "--test-pattern", "none.tfrecord"))
    assert config.gate_split == "eval"


def test_the_fallback_is_said_in_the_facts_summary_and_report(tmp_path):
    from pipeline.reporting import facts, html as report_html, summary

    config = configs.PipelineConfig(output_dir=str(tmp_path), test_pattern="",
                                    training=configs.TrainingConfig(label_names=("a", "b")))
    run = facts.collect(config, 1.0)
    assert run["gate_split"] == "eval" and run["gate_note"] == splits.FALLBACK_NOTE
    run.update(blessing={"blessed": True, "reason": "x"},
               evaluation={"accuracy": 0.9, "example_count": 30.0})
    run["accuracies"] = facts.accuracy_facts("eval", run["evaluation"], {})
    text = summary.format_summary(run)
    assert "  blessed: yes (eval accuracy 0.9000: " in text
    assert "  gate: " + splits.FALLBACK_NOTE in text.splitlines()
    assert ("  eval accuracy 0.9000, 95 % CI 0.7438-0.9654 (30 examples): chose the model and "
            "gates the push") in text.splitlines()
    assert "which also chose the model" in report_html.render(run)
    tested = configs.PipelineConfig(output_dir=str(tmp_path),
                                    training=configs.TrainingConfig(label_names=("a", "b")))
    assert facts.collect(tested, 1.0)["gate_note"] is None


@pytest.mark.parametrize("accuracy,n,low,high", [
    (0.9, 30, 0.7438, 0.9654), (1.0, 30, 0.8865, 1.0), (29 / 30, 30, 0.8333, 0.9941),
    (140 / 150, 150, 0.8816, 0.9634)])
def test_wilson_interval(accuracy, n, low, high):
    from pipeline.reporting.facts import wilson
    assert wilson(accuracy, n) == pytest.approx([low, high], abs=1e-4)
    assert wilson(None, n) is None and wilson(0.5, 0) is None


def test_span_merge_links_every_split_of_every_span(tmp_path):
    from components.custom.span_merge import merge_examples

    inputs = []
    for span, names in ((1, ("train", "eval")), (2, ("train", "eval", "test"))):
        uri = tmp_path / ("in%d" % span)
        for name in names:
            (uri / ("Split-" + name)).mkdir(parents=True)
            (uri / ("Split-" + name) / "data.gz").write_bytes(b"%d-%s" % (span, name.encode()))
        inputs.append((str(uri), list(names), span))
    out = tmp_path / "merged"
    assert merge_examples(inputs, str(out)) == {"train": 2, "eval": 2, "test": 1}
    assert sorted(p.name for p in (out / "Split-train").iterdir()) == [
        "span-1-0-data.gz", "span-2-1-data.gz"]
    assert (out / "Split-eval" / "span-2-1-data.gz").read_bytes() == b"2-eval"
    assert (out / "Split-test" / "span-2-1-data.gz").read_bytes() == b"2-test"
    assert (out / "Split-train" / "span-1-0-data.gz").stat().st_ino == (
        tmp_path / "in1" / "Split-train" / "data.gz").stat().st_ino  # linked, not copied
