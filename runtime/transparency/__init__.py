"""Transparency: what the served model does, measured on the model itself,
offline, and the signed report that hands it to an auditor
(docs/transparency.md).

    bias_data.py     the shipped templates and occupation groups (no download)
    scoring.py       log-probability of a target continuation, from the engine
                     through any Hearth client: generation forced to the target
                     by a grammar, scored with the raw (pre-sampling) logprobs
    bias.py          per-occupation pronoun preference, the stereotype
                     association gap with a confidence interval, and an SVG
                     chart; `hearth eval bias` writes JSON and the chart and
                     seals the result in the store
    report.py        the report's content (hearth-report/1) from the store, the
                     audit log and the config; EU AI Act Art. 13(3) mapping
    report_sign.py   its Ed25519 key (sealed), signature and `hearth report verify`
    report_render.py report.html and MODEL_CARD.md from the same content
    segments.py      explanations: a prompt cut into word, sentence or line
                     segments (UTF-8 byte offsets), each mapped to the tokens
                     it owns, and the occlusion arithmetic; the flow itself is
                     runtime/core/explain.py, the scoring native score.c
"""
