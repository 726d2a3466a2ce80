"""HTML of the report's diagnostics (pipeline/reporting/diagnostics.py): the warnings box and
the error-analysis section (over-fitting line, most confused pairs, the gallery of the most
confident mistakes, possible label errors). Pure: facts in, string out; every text escaped,
thumbnails as JPEG data URIs."""
from __future__ import annotations

from html import escape

from pipeline.reporting import diagnostics

CSS = """
.warnings{border-color:#e0b252;background:#fffaf0}
.warnings li{color:#8a5a00;margin:3px 0}
.gallery{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.gallery figure{margin:0;width:128px;font-size:11.5px;line-height:1.3}
.gallery img{width:auto;height:auto;max-width:120px;max-height:120px;display:block;
 border:1px solid #ddd}
.gallery .thumb{width:122px;height:122px;display:flex;align-items:center;
 justify-content:center;background:#fafafa}
.gallery figcaption{margin-top:3px;word-break:break-word}
.gallery .wrong{color:#c62828;font-weight:600}
.gallery .file{color:#777;font-size:10.5px}
"""


def _e(value) -> str:
    return escape("" if value is None else str(value))


def warnings_section(f: dict) -> str:
    lines = diagnostics.warnings(f.get("diagnostics"))
    if not lines:
        return ""
    return ('<section class="warnings"><h2>Warnings</h2><ul>%s</ul></section>'
            % "".join("<li>%s</li>" % _e(x) for x in lines))


def _figure(item: dict, caption: str, kind: str) -> str:
    img = ('<img alt="%s" src="data:image/jpeg;base64,%s">' % (_e(item.get("filename")),
                                                                item["thumbnail"])
           if item.get("thumbnail") else "(no thumbnail)")
    return ('<figure class="%s"><div class="thumb">%s</div><figcaption>%s%s</figcaption>'
            "</figure>" % (kind, img, caption, '<br><span class="file">%s</span>'
                           % _e(item["filename"]) if item.get("filename") else ""))


def error_section(f: dict) -> str:
    diag = f.get("diagnostics") or {}
    err, over = diag.get("errors"), diag.get("overfitting")
    if not err and not over:
        return ""
    parts = []
    if over:
        parts.append('<p class="%s overfitting">%s</p>' % ("note" if over["overfit"] else "",
                                                          _e(diagnostics.overfitting_text(over))))
    if err:
        split = err["split"]
        parts.append('<p>%d of %d %s images misclassified by the %s model\'s '
                     '<code>serving_default</code> signature (raw image bytes in, as TF Serving '
                     'runs it)%s; %.1f s%s.</p>'
                     % (err["wrong"], err["scored"], _e(split),
                        _e(err.get("model_source") or "trained"),
                        " (the first %d only)" % err["scored"] if err.get("truncated") else "",
                        err.get("seconds") or 0,
                        ", reused from an earlier run on the same model and images"
                        if err.get("reused") else
                        ", computed while the pipeline ran" if err.get("precomputed") else ""))
        pairs = err.get("confused_pairs") or []
        if pairs:
            rows = "".join('<tr class="confused"><td>%s</td><td>%s</td><td class="num">%d</td>'
                           '<td class="num">%d</td></tr>'
                           % (_e(p["true"]), _e(p["predicted"]), p["count"], p["of_true"])
                           for p in pairs)
            parts.append("<h3>Most confused pairs</h3><table><tr><th>true class</th>"
                         "<th>predicted as</th><th class=\"num\">images</th>"
                         "<th class=\"num\">of the true class</th></tr>%s</table>" % rows)
        top = err.get("top_losses") or []
        if top:
            figs = "".join(_figure(t, '<span class="wrong">%s</span> %.3f<br>true: %s (%.3f)'
                                   % (_e(t["predicted"]), t["probability"], _e(t["true"]),
                                      t["true_probability"]), "top-loss") for t in top)
            parts.append("<h3>Most confident mistakes (%s split)</h3><p class=\"meta\">predicted "
                         "class and its probability, then the true class and the probability "
                         "the model gave it</p><div class=\"gallery top-losses\">%s</div>"
                         % (_e(split), figs))
        if "label_errors_count" in err:
            suspects = err.get("label_errors") or []
            head = ("<h3>Possible label errors (training split)</h3><p>%d of %d training "
                    "images%s get less than %.0f %% probability for their given label%s</p>"
                    % (err["label_errors_count"], err["train_scored"],
                       " (the first %d scored)" % err["train_scored"]
                       if err.get("train_truncated") else "",
                       100 * err["label_error_probability"],
                       ": check them" if suspects else ""))
            figs = "".join(_figure(s, 'given: <span class="wrong">%s</span> %.3f<br>model: %s '
                                   "(%.3f)" % (_e(s["given"]), s["given_probability"],
                                               _e(s["predicted"]), s["probability"]),
                                   "label-error") for s in suspects)
            parts.append(head + ('<div class="gallery label-errors">%s</div>' % figs
                                 if figs else ""))
    return "<section class=\"errors\"><h2>Error analysis</h2>%s</section>" % "".join(parts)
