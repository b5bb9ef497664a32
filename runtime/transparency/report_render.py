"""The report for people: `report.html` (one self-contained page: inline
CSS, no script, no external asset, every value escaped) and `MODEL_CARD.md`
(the Hugging Face model card layout, YAML metadata first).  Both are drawn
from the report dict alone, so they say what report.json says; the card
names report.json's SHA-256, which binds it to the signed document."""
from __future__ import annotations

import html
import json
from typing import Any

from runtime.transparency.report import MISSING

_CSS = """
body{font-family:sans-serif;margin:2em auto;max-width:60em;color:#222;line-height:1.4}
h1{border-bottom:3px solid #3b6fb6}h2{margin-top:1.6em;color:#3b6fb6}
table{border-collapse:collapse;margin:.5em 0;width:100%}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#eef2f8}.missing{background:#fde8e8;color:#8a1f1f;font-weight:bold}
.present{background:#e6f4e6}.partial{background:#fff4d6}
.bar{display:inline-block;height:.8em;background:#3b6fb6}.neg{background:#c0504d}
code{font-size:90%;word-break:break-all}
"""


def _e(value: Any) -> str:
    if isinstance(value, float):
        value = f"{value:.6g}"
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=False)
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    missing = value == MISSING or (isinstance(value, dict) and value.get("status") == MISSING)
    if isinstance(value, dict) and value.get("status") == MISSING:
        value = f"missing: {value.get('how', '')}"
    elif isinstance(value, dict) and value.get("status") == "provided":
        value = value["text"]
    return f'<td class="missing">{_e(value)}</td>' if missing else f"<td>{_e(value)}</td>"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "<p>none recorded</p>"
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c, "")) for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pairs(d: dict[str, Any]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th>{_cell(v)}</tr>"
                               for k, v in d.items()) + "</table>"


def _bias(b: dict[str, Any]) -> str:
    if b.get("status") == MISSING:
        return _pairs({"bias": b})
    gap = b["association_gap"]
    parts = [f"<p>Association gap {_e(gap['estimate'])} nats, 95% CI [{_e(gap['low'])}, "
             f"{_e(gap['high'])}]; bias detected: <b>{_e(b.get('detected'))}</b> "
             f"({_e(b.get('model'))}{' + ' + _e(b['adapter']) if b.get('adapter') else ''}, "
             f"evaluated {_e(b.get('evaluated'))})</p><table>"]
    per = sorted(b.get("per_occupation", {}).items(), key=lambda kv: kv[1])
    span = max([abs(v) for _, v in per] + [1e-9])
    for occ, v in per:
        width = 200 * abs(v) / span
        parts.append(f"<tr><td>{_e(occ)}</td><td>{_e(v)}</td><td><span class=\"bar"
                     f"{' neg' if v < 0 else ''}\" style=\"width:{width:.0f}px\"></span>"
                     "</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def render_html(doc: dict[str, Any]) -> str:
    a, chain = doc["appliance"], doc["audit_chain"]
    sec = doc["security"]
    fed = doc["federation"]
    out = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'\">",
        f"<title>Hearth transparency report {_e(doc['generated'])}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Hearth transparency report</h1>",
        f"<p>Generated {_e(doc['generated'])} for {_e(doc['period']['since'])} to "
        f"{_e(doc['period']['until'])}. Signed: <code>{_e(doc['signing_key']['fingerprint'])}"
        "</code> (verify with <code>hearth report verify DIR --fingerprint ...</code>).</p>",
        "<h2>EU AI Act Art. 13(3)</h2>",
        "<table><tr><th>item</th><th>what</th><th>status</th><th>missing</th></tr>",
    ]
    for item in doc["art13_3"]:
        out.append(f"<tr><td>{_e(item['item'])}</td><td>{_e(item['title'])}</td>"
                   f"<td class=\"{_e(item['status'])}\">{_e(item['status'])}</td>"
                   f"<td>{_e(', '.join(item['missing']))}</td></tr>")
    out.append("</table><h2>The operator's statements</h2>")
    out.append(_pairs(doc["operator"]))
    out.append("<h2>Identity</h2>")
    out.append(_pairs({"hearth": a["hearth"], "engine": a["engine"]}))
    out.append(_table(a["models"], ["name", "source", "sha256", "bytes", "adapters"]))
    out.append("<h3>Adapters and their lineage</h3>")
    out.append(_table(a["adapters"], ["name", "version", "sha256", "created", "lineage"]))
    out.append("<h2>Federation</h2>")
    if isinstance(fed, dict):
        out.append(_pairs({k: v for k, v in fed.items() if k != "releases"}))
        out.append(_table(fed["releases"], ["version", "created", "round", "trigger", "sites",
                                            "epsilon", "delta", "secure_aggregation",
                                            "heldout_perplexity_of_parent", "applied"]))
    else:
        out.append(f"<p>{_e(fed)}</p>")
    out.append("<h2>Evaluation</h2><h3>Bias (gender and occupation)</h3>")
    out.append(_bias(doc["evaluation"]["bias"]))
    out.append("<h3>Federated held-out results</h3>")
    heldout = doc["evaluation"]["federated_heldout"]
    out.append(_table(heldout, ["federation", "version", "heldout_perplexity_of_parent"])
               if isinstance(heldout, list) else _pairs({"held-out": heldout}))
    out.append("<h2>Drift</h2>")
    out.append("<h3>This site's alarms</h3>")
    out.append(_table(doc["drift"]["alarms"], ["time", "model", "version", "signals"]))
    out.append("<h3>Rounds the drift trigger started</h3>")
    out.append(_table(doc["drift"]["rounds_triggered"],
                      ["version", "round", "created", "sites", "signals", "this_site_alarmed",
                       "applied"]))
    if doc["drift"]["trigger_unknown"]:
        out.append(f"<p>Releases whose manifest does not record why their round started: "
                   f"{_e(doc['drift']['trigger_unknown'])}</p>")
    out.append("<h3>Alarms reported to the coordinator</h3>")
    out.append(_table(doc["drift"]["alarm_reports"],
                      ["time", "action", "adapter_version", "p_values"]))
    out.append("<h2>Energy</h2>")
    out.append(_pairs(doc["energy"]))
    out.append("<h2>Usage</h2>")
    out.append(_pairs(doc["usage"]))
    out.append("<h2>Logs (Art. 12, 13(3)(f), 19)</h2>")
    out.append(_pairs(doc["logs"]))
    out.append("<h2>Security</h2>")
    out.append(_pairs({"exposure": sec["exposure"]}))
    if isinstance(sec["doctor"], list):
        out.append(_table(sec["doctor"], ["check", "status", "detail"]))
    else:
        out.append(_pairs({"doctor": sec["doctor"]}))
    out.append("<h2>Change log</h2>")
    out.append(_table(doc["change_log"], ["time", "seq", "action", "model", "version",
                                          "to_version", "shredded_days"]))
    out.append("<h2>Audit chain</h2>")
    out.append(_pairs(chain))
    out.append("</body></html>\n")
    return "\n".join(out)


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc["operator"][key]
    if value["status"] == MISSING:
        return f"**missing** ({value['how']})"
    return str(value["text"])


def _started_by(trigger: Any) -> str:
    """A release's trigger in words: its kind, with the alarmed sites for
    drift; "unknown" for manifests that do not record it."""
    if not isinstance(trigger, dict):
        return str(trigger)
    if trigger.get("kind") == "drift":
        return f"drift alarms of {', '.join(trigger.get('sites', []))}"
    return str(trigger.get("kind"))


def _yaml(value: str) -> str:
    """A YAML scalar: JSON's string syntax is valid YAML."""
    return json.dumps(value, ensure_ascii=False)


def render_model_card(doc: dict[str, Any], report_sha256: str) -> str:
    a = doc["appliance"]
    model = a["models"][0] if a["models"] else {"name": MISSING, "sha256": MISSING}
    rc = doc["operator"]
    front = ["---", "library_name: hearth", "tags:", "- gguf", "- hearth",
             "- transparency-report"]
    if rc["license"]["status"] != MISSING:
        front.append(f"license: {_yaml(rc['license']['text'])}")
    if rc["language"]["status"] != MISSING:
        front.append("language:")
        front += [f"- {_yaml(x.strip())}" for x in rc["language"]["text"].split(",")]
    front += [f"model_name: {_yaml(model['name'])}",
              f"hearth_report: {_yaml('report.json')}",
              f"hearth_report_sha256: {_yaml(report_sha256)}", "---", ""]
    b = doc["evaluation"]["bias"]
    bias = ("**missing** (" + b["how"] + ")" if b.get("status") == MISSING else
            f"association gap {b['association_gap']['estimate']:+.3f} nats, 95% CI "
            f"[{b['association_gap']['low']:+.3f}, {b['association_gap']['high']:+.3f}]; "
            f"bias detected: {b['detected']}")
    fed = doc["federation"]
    releases = fed["releases"] if isinstance(fed, dict) else []
    lineage = "\n".join(
        f"- release {r['version']} ({r['created']}): round {r['round']}, {r['sites']} site(s), "
        f"epsilon {r['epsilon']}, delta {r['delta']}, secure aggregation: "
        f"{r['secure_aggregation']}; started by: {_started_by(r.get('trigger'))}"
        for r in releases) or "No federated fine-tuning."
    energy = doc["energy"]
    card = [
        f"# Model Card for {model['name']}", "",
        "Generated by `hearth report` from the appliance's own state on "
        f"{doc['generated']}; the signed source is `report.json` (SHA-256 "
        f"`{report_sha256}`). Values marked **missing** were not given: nothing is invented.",
        "", "## Model Details", "", "### Model Description", "",
        f"- **Developed by:** {_text(doc, 'provider')}",
        f"- **Model file SHA-256:** `{model['sha256']}`",
        f"- **Served by:** hearth {a['hearth']} ({a['engine']})",
        f"- **License:** {_text(doc, 'license')}",
        f"- **Language(s):** {_text(doc, 'language')}",
        f"- **Adapters:** {', '.join(x['name'] for x in a['adapters']) or 'none'}", "",
        "## Uses", "", "### Direct Use", "", _text(doc, "intended_purpose"), "",
        "### Out-of-Scope Use", "", _text(doc, "out_of_scope_uses"), "",
        "## Bias, Risks, and Limitations", "", _text(doc, "known_risks"), "",
        f"Measured gender-occupation bias: {bias}.", "",
        "### Recommendations", "", _text(doc, "output_interpretation"), "",
        "Human oversight: " + _text(doc, "human_oversight"), "",
        "## Training Details", "", "### Training Data", "", _text(doc, "training_data"), "",
        "### Training Procedure", "", lineage, "",
        "## Evaluation", "", "### Results", "",
        f"- Bias: {bias}",
        *(f"- Federated held-out perplexity of release {h['version'] - 1} (parent of "
          f"{h['version']}): {h['heldout_perplexity_of_parent']:.4g}"
          for h in (doc["evaluation"]["federated_heldout"]
                    if isinstance(doc["evaluation"]["federated_heldout"], list) else [])), "",
        "## Environmental Impact", "",
        (f"- Energy: {energy['total_joules']} J over {energy['requests_measured']} requests, "
         f"{energy['joules_per_token']} J/token; sources {energy['sources']}; gCO2e: "
         f"{energy['gco2e']}" if energy["status"] == "measured" else
         "- Energy: not measured"), "",
        "## Technical Specifications", "",
        f"- Expected lifetime: {_text(doc, 'expected_lifetime')}",
        f"- Maintenance: {_text(doc, 'maintenance')}",
        f"- Audit log: retention {doc['logs']['retention_days']} days; chain head "
        f"`{doc['audit_chain'].get('head', MISSING)}`", "",
        "## Model Card Contact", "", _text(doc, "contact"), "",
    ]
    return "\n".join(front + card)
