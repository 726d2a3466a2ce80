"""pipeline/reporting/memo.py: the report's costly results are reused only for the same inputs."""
import json
import os

from pipeline.reporting import memo


class Counter:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return {"value": self.calls}


def test_same_key_reuses_a_changed_key_recomputes_one_file_per_name(tmp_path):
    compute = Counter()
    assert memo.cached(str(tmp_path), "x", {"k": 1}, compute) == {"value": 1}
    assert memo.cached(str(tmp_path), "x", {"k": 1}, compute) == {"value": 1, "reused": True}
    assert memo.cached(str(tmp_path), "x", {"k": 2}, compute) == {"value": 2}
    assert compute.calls == 2
    assert len(os.listdir(tmp_path / memo.CACHE_DIR)) == 1
    memo.cached(str(tmp_path), "y", {"k": 1}, compute)
    assert len(os.listdir(tmp_path / memo.CACHE_DIR)) == 2


def test_an_entry_computed_since_the_run_started_is_the_runs_own(tmp_path):
    """report_prefetch's helper computes a section during the run: the report then finds it
    `precomputed`, not `reused`; an entry from before the run's start is reused."""
    import time
    compute = Counter()
    before = time.time()
    memo.cached(str(tmp_path), "x", {"k": 1}, compute)
    after = time.time() + 1
    assert memo.cached(str(tmp_path), "x", {"k": 1}, compute, fresh_since=before) == {
        "value": 1, "precomputed": True}
    assert memo.cached(str(tmp_path), "x", {"k": 1}, compute, fresh_since=after) == {
        "value": 1, "reused": True}
    assert compute.calls == 1


def test_corrupt_entry_is_recomputed_and_unwritable_cache_costs_nothing(tmp_path):
    compute = Counter()
    memo.cached(str(tmp_path), "x", {"k": 1}, compute)
    [entry] = (tmp_path / memo.CACHE_DIR).iterdir()
    entry.write_text("{not json")
    assert memo.cached(str(tmp_path), "x", {"k": 1}, compute) == {"value": 2}
    assert json.loads(entry.read_text())["result"] == {"value": 2}
    blocked = tmp_path / "file"
    blocked.write_text("a regular file where the output directory should be")
    assert memo.cached(str(blocked), "x", {"k": 1}, compute) == {"value": 3}


def test_file_identity_changes_with_size_or_mtime(tmp_path):
    f = tmp_path / "a"
    f.write_bytes(b"12")
    first = memo.files_identity([str(f)])
    os.utime(f, ns=(1, 1))
    second = memo.files_identity([str(f)])
    f.write_bytes(b"123")
    os.utime(f, ns=(1, 1))
    assert len({json.dumps(x) for x in (first, second, memo.files_identity([str(f)]))}) == 3
    assert memo.files_identity([str(tmp_path / "missing")]) == [[str(tmp_path / "missing")]]


def test_a_pushed_copy_of_a_model_is_the_same_model(tmp_path):
    """The report cache's model key (components/savedmodel_fingerprint.py): a copy with the
    push record added and other times is the same model; a changed byte is not."""
    import shutil

    from components.savedmodel_fingerprint import PUSH_RECORD, fingerprint
    (tmp_path / "d" / "variables").mkdir(parents=True)
    (tmp_path / "d" / "saved_model.pb").write_bytes(b"graph")
    (tmp_path / "d" / "variables" / "v").write_bytes(b"weights")
    shutil.copytree(tmp_path / "d", tmp_path / "copy")
    (tmp_path / "copy" / PUSH_RECORD).write_text("{}")
    os.utime(tmp_path / "copy" / "saved_model.pb", ns=(1, 1))
    assert fingerprint(str(tmp_path / "copy")) == fingerprint(str(tmp_path / "d"))
    (tmp_path / "copy" / "variables" / "v").write_bytes(b"weightz")
    assert fingerprint(str(tmp_path / "copy")) != fingerprint(str(tmp_path / "d"))


def test_source_digest_follows_the_code(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("X = 1\n")
    first = memo.source_digest(str(module))
    module.write_text("X = 2\n")
    assert memo.source_digest(str(module)) != first
