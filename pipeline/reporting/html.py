"""HTML of the run report: render(facts) -> one self-contained page (inline CSS, PNGs as
base64 data URIs, no scripts, no external assets). Pure: facts in, string out (see
pipeline/reporting/facts.py for the facts)."""
from __future__ import annotations

from html import escape

CSS = """
body{font:14px/1.45 -apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;color:#222;
 margin:0;background:#f4f5f7}
main{max-width:1080px;margin:0 auto;padding:18px 24px 40px}
h1{font-size:22px;margin:4px 0 2px}
h2{font-size:17px;margin:0 0 10px;border-bottom:1px solid #e3e5e8;padding-bottom:4px}
section{background:#fff;border:1px solid #dfe1e5;border-radius:6px;padding:14px 18px;
 margin:14px 0}
.meta{color:#666;font-size:12.5px;word-break:break-all}
.badge{display:inline-block;padding:2px 9px;border-radius:10px;font-size:12px;font-weight:600;
 color:#fff;vertical-align:middle}
.ok{background:#2e7d32}.warn{background:#b26a00}.bad{background:#c62828}.muted{background:#78808a}
table{border-collapse:collapse;margin:6px 0 4px;font-size:13px}
th,td{border-bottom:1px solid #eceef1;padding:4px 12px 4px 0;text-align:left;
 vertical-align:top}
th{color:#555;font-weight:600}
td.num,th.num{text-align:right;padding-right:14px;font-variant-numeric:tabular-nums}
tr.total td{font-weight:600;border-top:1px solid #ccd}
pre{background:#fff4f4;border:1px solid #f0c8c8;padding:8px 10px;white-space:pre-wrap;
 word-break:break-word;font-size:12.5px;margin:6px 0}
img{max-width:100%;height:auto;border:1px solid #eee}
.cols{display:flex;gap:28px;flex-wrap:wrap;align-items:flex-start}
.outcome p{margin:4px 0}
.note{color:#8a5a00}
td.file{white-space:nowrap;font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12px}
.bar{display:inline-block;height:9px;background:#5b8def;border-radius:2px;vertical-align:middle}
"""

STATE_CLASS = {"COMPLETE": "ok", "CACHED": "muted", "FAILED": "bad", "RUNNING": "warn",
               "NEW": "warn", "CANCELED": "bad"}


def _e(value) -> str:
    return escape("" if value is None else str(value))


def _num(value, fmt: str = "%.4f") -> str:
    return "&ndash;" if value is None else fmt % value


def _badge(text: str, cls: str) -> str:
    return '<span class="badge %s">%s</span>' % (cls, _e(text))


def _img(b64: str | None, alt: str, width: int | None = None) -> str:
    if not b64:
        return '<p class="note">(%s not available)</p>' % _e(alt)
    style = ' style="max-width:%dpx"' % width if width else ""
    return '<img alt="%s" src="data:image/png;base64,%s"%s>' % (_e(alt), b64, style)


def status(facts: dict) -> tuple[str, str]:
    """(badge text, css class) of the whole run."""
    if facts.get("failed"):
        return "FAILED", "bad"
    blessing, push = facts.get("blessing") or {}, facts.get("push") or {}
    if blessing.get("blessed") is False:
        return "NOT BLESSED", "warn"
    if push.get("pushed"):
        return "BLESSED, PUSHED", "ok"
    if blessing.get("blessed"):
        return "BLESSED, NOT PUSHED", "ok"
    return "UNKNOWN", "muted"


def _header(f: dict) -> str:
    text, cls = status(f)
    return ("<h1>%s %s</h1><div class=\"meta\">%s &middot; %.0f s &middot; backbone %s &middot; "
            "model %s<br>data %s<br>output %s</div>"
            % (_e(f.get("title", "graft run report")), _badge(text, cls), _e(f.get("generated")),
               f.get("seconds") or 0, _e(f.get("backbone")), _e(f.get("model_name")),
               _e(f.get("data_dir")), _e(f.get("output_dir"))))


def _outcome(f: dict) -> str:
    rows = []
    if f.get("failed"):
        rows.append("<p>%s the run failed:</p><pre>%s</pre>" % (_badge("FAILED", "bad"),
                                                                 _e(f["failed"])))
        rows.append("<p class=\"meta\">Finished components stay cached: rerun the same "
                    "command to resume.</p>")
    b = f.get("blessing") or {}
    if b:
        rows.append('<p class="blessing">blessed: %s &mdash; %s</p>'
                    % ("yes" if b["blessed"] else "no", _e(b.get("reason"))))
    else:
        rows.append('<p class="blessing">blessed: unknown (the Evaluator did not finish)</p>')
    p = f.get("push") or {}
    if p.get("pushed"):
        rows.append('<p class="push">pushed: <code>%s</code> (%s)</p>'
                    % (_e(p.get("pushed_destination")), _e(p.get("push_reason"))))
    elif p:
        dest = p.get("pushed_destination")
        rows.append('<p class="push">not pushed: %s%s</p>'
                    % (_e(p.get("push_reason")),
                       " (served: <code>%s</code>)" % _e(dest) if dest else ""))
    else:
        rows.append('<p class="push">not pushed: the pusher did not run</p>')
    acc = (f.get("evaluation") or {}).get("accuracy")
    if acc is not None:
        rows.append("<p>%s accuracy: <b>%.4f</b> (floor %.3f)</p>"
                    % (_e(f.get("gate_split") or "eval"), acc, f.get("min_accuracy") or 0))
    rows.append(_accuracies(f))
    if f.get("gate_note"):
        rows.append('<p class="note gate-note">%s</p>' % _e(f["gate_note"]))
    return '<section class="outcome"><h2>Outcome</h2>%s</section>' % "".join(rows)


def _accuracies(f: dict) -> str:
    """Each accuracy (gating split, last blessed model, eval split) with its 95 % interval."""
    rows = "".join(
        '<tr class="accuracy"><td>%s</td><td class="num">%.4f</td><td class="num">%s</td>'
        '<td class="num">%s</td><td>%s</td></tr>'
        % (_e(r["split"]), r["accuracy"],
           "%.4f&ndash;%.4f" % tuple(r["ci95"]) if r.get("ci95") else "&ndash;",
           _num(r.get("examples"), "%d"), _e(r.get("role")))
        for r in f.get("accuracies") or [])
    if not rows:
        return ""
    return ('<table class="accuracies"><tr><th>split</th><th class="num">accuracy</th>'
            '<th class="num">95 %% interval (Wilson)</th><th class="num">examples</th>'
            "<th></th></tr>%s</table><p class=\"meta\">Two accuracies whose intervals overlap "
            "may not differ: one image is 1/examples.</p>" % rows)


def _components(f: dict) -> str:
    comps = f.get("components") or []
    if not comps:
        return ""
    body = "".join("<tr><td>%s</td><td>%s</td><td class=\"num\">%.1f s</td></tr>"
                   % (_e(c["node"]), _badge(c["state"].lower(), STATE_CLASS.get(c["state"],
                                                                               "muted")),
                      c.get("seconds") or 0.0) for c in comps)
    total = sum(c.get("seconds") or 0.0 for c in comps)
    return ("<section><h2>Components</h2><table><tr><th>component</th><th>state</th>"
            "<th class=\"num\">wall time</th></tr>%s<tr class=\"total\"><td>total</td><td></td>"
            "<td class=\"num\">%.1f s</td></tr></table></section>" % (body, total))


def _class_name(names: list, label) -> str:
    try:
        return names[int(label)]
    except (ValueError, TypeError, IndexError):
        return str(label)


def _data(f: dict) -> str:
    d = f.get("data") or {}
    names = d.get("label_names") or f.get("label_names") or []
    splits = d.get("splits") or {}
    parts = []
    if splits:
        order = [s for s in ("train", "eval", "test") if s in splits] + sorted(
            set(splits) - {"train", "eval", "test"})
        labels = sorted({int(k) for s in order for k in splits[s].get("label_counts", {})}
                        | set(range(len(names))))
        head = "".join('<th class="num">%s</th>' % _e(s) for s in order)
        rows = []
        for label in labels:
            cells = "".join('<td class="num">%d</td>'
                            % splits[s].get("label_counts", {}).get(str(label), 0)
                            for s in order)
            rows.append('<tr class="class-count"><td>%s</td>%s</tr>'
                        % (_e(_class_name(names, label)), cells))
        kept = "".join('<td class="num">%d</td>' % (splits[s].get("records", 0)
                                                     - splits[s].get("bad", 0)) for s in order)
        bad = "".join('<td class="num">%d</td>' % splits[s].get("bad", 0) for s in order)
        span = d.get("span")
        parts.append("<p>Examples per class and split%s, after ImageCheck dropped the records "
                     "whose image does not decode:</p>" % (" (span %s)" % _e(span)
                                                           if span is not None else ""))
        parts.append("<table><tr><th>class</th>%s</tr>%s<tr class=\"total\"><td>kept</td>%s"
                     "</tr><tr><td>dropped (bad image)</td>%s</tr></table>"
                     % (head, "".join(rows), kept, bad))
    else:
        parts.append('<p class="note">No per-class counts (ImageCheck did not finish).</p>')
    bad_records = d.get("bad_records") or []
    if bad_records:
        rows = "".join(
            "<tr><td>%s</td><td class=\"file\">%s</td><td class=\"num\">%s</td><td>%s</td>"
            "<td>%s</td>"
            "<td>%s</td></tr>" % (_e(b.get("split")), _e(b.get("file")), _e(b.get("index")),
                                 _e(b.get("filename")), _e(_class_name(names, b.get("label"))
                                                           if b.get("label") is not None else ""),
                                 _e(b.get("error"))) for b in bad_records[:200])
        more = ("<p class=\"meta\">... and %d more (see ImageCheck's image_check.json)</p>"
                % (len(bad_records) - 200) if len(bad_records) > 200 else "")
        parts.append("<h3>Bad images (%d records dropped)</h3><table class=\"bad-records\">"
                     "<tr><th>split</th><th>ExampleGen file</th><th class=\"num\">record</th>"
                     "<th>filename</th><th>label</th><th>error</th></tr>%s</table>%s"
                     % (len(bad_records), rows, more))
    elif splits:
        parts.append("<p>Bad images: none.</p>")
    dup = d.get("duplicates")
    if dup and dup.get("groups"):
        across = dup.get("across_splits", 0)
        parts.append('<p%s>Duplicate images (identical bytes, found by make-tfrecords): %d '
                     "groups, %d files; under two or more classes: %d; in both train and eval: "
                     "%d%s</p>" % (' class="note"' if across or dup.get("across_classes") else "",
                                   dup.get("groups", 0), dup.get("files", 0),
                                   dup.get("across_classes", 0), across,
                                   " (eval accuracy counts those as unseen photos)"
                                   if across else ""))
    elif dup is not None:
        parts.append("<p>Duplicate images: none.</p>")
    anomalies = d.get("anomalies") or {}
    if anomalies:
        items = "".join("<li>%s: %s</li>" % (_e(s), "none" if not a else
                                             "; ".join(_e(x) for x in a))
                        for s, a in sorted(anomalies.items()))
        parts.append("<p>Schema anomalies (ExampleValidator):</p><ul>%s</ul>" % items)
    gate = f.get("data_gate")
    if gate:
        verdict = {"COMPLETE": "passed", "CACHED": "passed (cached)", "FAILED": "failed"}.get(
            gate, gate.lower())
        parts.append("<p>DataGate: %s</p>" % _e(verdict))
    return "<section><h2>Data</h2>%s</section>" % "".join(parts)


def _training(f: dict) -> str:
    t = f.get("training") or {}
    if not t:
        return ""
    s = t.get("summary") or {}
    rows = []
    for key in ("phase1", "phase2"):
        p = s.get(key) or {}
        if p:
            label = p.get("label") or key.replace("phase", "phase ")
            if not p.get("kept", True):
                label += " (not kept: no better than phase 1)"
            rows.append("<tr><td>%s</td><td class=\"num\">%s of %s</td><td class=\"num\">%s</td>"
                        "<td class=\"num\">%s</td><td class=\"num\">%.0f s</td></tr>"
                        % (label, p.get("epoch"), p.get("epochs_run"),
                           _num(p.get("val_accuracy")), _num(p.get("val_loss")),
                           p.get("seconds") or 0))
    table = ("<table><tr><th>phase</th><th class=\"num\">best epoch</th><th class=\"num\">"
             "val accuracy</th><th class=\"num\">val loss</th><th class=\"num\">time</th></tr>"
             "%s</table>" % "".join(rows)) if rows else ""
    extra = ""
    if s:
        extra = ("<p class=\"meta\">final val accuracy %s &middot; image size %s &middot; "
                 "batch %s &middot; %s &middot; %s</p>"
                 % (_num(s.get("final_val_accuracy")), _e(s.get("image_size")),
                    _e(s.get("global_batch")), _e(s.get("strategy")), _e(s.get("precision"))))
    title = ("from scratch: random init, every layer trained" if s.get("init") == "random"
             else "phase 1: frozen base; phase 2: fine-tuning")
    return ("<section><h2>Training (%s)</h2>%s%s%s</section>"
            % (title, _img(t.get("history_png"), "training curves"), table, extra))


def _evaluation(f: dict) -> str:
    ev = f.get("evaluation") or {}
    if not ev:
        return ""
    names = f.get("label_names") or []
    split = f.get("gate_split") or "eval"
    eval_counts = (((f.get("data") or {}).get("splits") or {}).get(split) or {}).get(
        "label_counts", {})
    recall = {int(k): v for k, v in (ev.get("recall") or {}).items()}
    rows = "".join(
        '<tr class="recall"><td>%s</td><td class="num">%.4f</td><td><span class="bar" '
        'style="width:%dpx"></span></td><td class="num">%s</td></tr>'
        % (_e(_class_name(names, k)), v, int(round(120 * v)), eval_counts.get(str(k), ""))
        for k, v in sorted(recall.items()))
    left = ("<p>accuracy <b>%s</b> on %s %s examples</p><table><tr><th>class</th>"
            "<th class=\"num\">recall</th><th></th><th class=\"num\">%s examples</th></tr>"
            "%s</table>" % (_num(ev.get("accuracy")), _num(ev.get("example_count"), "%d"),
                            _e(split), _e(split), rows))
    if ev.get("failures"):
        left += "<p>Validation failures:</p><ul>%s</ul>" % "".join(
            "<li>%s</li>" % _e(x) for x in ev["failures"])
    right = "<div><p>Confusion matrix (TFMA)</p>%s</div>" % _img(ev.get("confusion_png"),
                                                                 "confusion matrix", 520)
    return ("<section><h2>Evaluation (TFMA, %s split)</h2><div class=\"cols\"><div>%s</div>"
            "%s</div></section>" % (_e(split), left, right))


def _exports(f: dict) -> str:
    rows = f.get("exports") or []
    if not rows:
        return ""
    body = "".join(
        "<tr><td>%s</td><td class=\"num\">%s MB</td><td class=\"num\">%s</td>"
        "<td class=\"num\">%s</td><td>%s</td></tr>"
        % (_e(r["format"]), _num((r.get("size_bytes") or 0) / 1e6, "%.2f"),
           _num(r.get("accuracy")), _num(100 * (r.get("drop") or 0.0), "%.2f"),
           _e("see Outcome" if r["format"] == "SavedModel" else
              ("pushed: %s" if r.get("pushed") else "not pushed: %s") % r.get("reason")))
        for r in rows)
    return ("<section><h2>Exports</h2><p class=\"meta\">accuracy on the %s, TFLite through "
            "its interpreter on uint8 pixels</p><table><tr><th>format</th><th class=\"num\">"
            "size</th><th class=\"num\">accuracy</th><th class=\"num\">drop (points)</th>"
            "<th>push</th></tr>%s</table></section>" % (_e(rows[0].get("split")), body))


def _notes(f: dict) -> str:
    notes = f.get("notes") or []
    if not notes:
        return ""
    return "<section><h2>Notes</h2><ul>%s</ul></section>" % "".join(
        '<li class="note">%s</li>' % _e(n) for n in notes)


def render(facts: dict) -> str:
    from pipeline.reporting import diagnostics_html as diag
    body = "".join([_header(facts), _outcome(facts), diag.warnings_section(facts), _data(facts),
                    _training(facts), _evaluation(facts), _exports(facts),
                    diag.error_section(facts), _components(facts), _notes(facts)])
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<title>%s</title><style>%s</style></head><body><main>%s</main></body></html>\n"
            % (_e(facts.get("title", "graft run report")), CSS + diag.CSS, body))
