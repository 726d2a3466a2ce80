"""Reading a finished run back out of ML Metadata: which nodes ran or were cached, and the
artifacts they produced. Used by the run facts, `graft retrain` and the tests (no TFX
internals)."""
from __future__ import annotations

import ml_metadata as mlmd
from ml_metadata.proto import metadata_store_pb2

STATE_NAMES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


def open_store(sqlite_path: str) -> mlmd.MetadataStore:
    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = sqlite_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return mlmd.MetadataStore(cfg)


def run_ids(store) -> list[str]:
    """Pipeline run ids, oldest first."""
    runs = store.get_contexts_by_type("pipeline_run")
    return [c.name for c in sorted(runs, key=lambda c: c.create_time_since_epoch)]


def node_executions(store, run_id: str | None = None) -> dict:
    """node id -> the Execution of that node in the given (default: latest) run."""
    runs = sorted(store.get_contexts_by_type("pipeline_run"),
                  key=lambda c: c.create_time_since_epoch)
    if not runs:
        return {}
    run = runs[-1] if run_id is None else next(c for c in runs if c.name == run_id)
    in_run = {e.id: e for e in store.get_executions_by_context(run.id)}
    out = {}
    for node in store.get_contexts_by_type("node"):
        node_id = node.name.split(".", 1)[-1]
        for e in store.get_executions_by_context(node.id):
            if e.id in in_run:
                out[node_id] = in_run[e.id]
    return out


def node_states(store, run_id: str | None = None) -> dict:
    """node id -> 'COMPLETE' | 'CACHED' | 'FAILED' | ... for a run."""
    return {k: STATE_NAMES.get(e.last_known_state, str(e.last_known_state))
            for k, e in node_executions(store, run_id).items()}


def output_artifacts(store, execution) -> list:
    events = store.get_events_by_execution_ids([execution.id])
    outputs = (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    ids = [ev.artifact_id for ev in events if ev.type in outputs]
    return store.get_artifacts_by_id(ids) if ids else []


def output_artifact(store, execution, kind: str):
    """The output artifact of an execution whose URI is .../<kind>/<id> (TFX names an
    output's directory after its key: examples, model, report...), or None."""
    for a in output_artifacts(store, execution):
        if a.uri.rstrip("/").split("/")[-2] == kind:
            return a
    return None


def span(artifact):
    """An Examples artifact's span: its `span` property, else the custom property (custom
    components set that one), else None."""
    if "span" in artifact.properties:
        return artifact.properties["span"].int_value
    return custom(artifact, "span")


def custom(artifact, key, default=None):
    if key not in artifact.custom_properties:
        return default
    v = artifact.custom_properties[key]
    which = v.WhichOneof("value")
    return getattr(v, which) if which else default


def count_executions(store, node_id: str, states=("COMPLETE",)) -> int:
    """How many times a node really executed (not cached) across all runs."""
    wanted = {metadata_store_pb2.Execution.State.Value(s) for s in states}
    n = 0
    for node in store.get_contexts_by_type("node"):
        if node.name.split(".", 1)[-1] == node_id:
            n += sum(1 for e in store.get_executions_by_context(node.id)
                     if e.last_known_state in wanted)
    return n
