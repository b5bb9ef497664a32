"""Transparency: what the served model does, measured on the model itself,
offline (the transparency issue: the bias evaluation and explanations; the
signed report and retention come next).

    bias_data.py   the shipped templates and occupation groups (no download)
    scoring.py     log-probability of a target continuation, from the engine
                   through any Hearth client: generation forced to the target
                   by a grammar, scored with the raw (pre-sampling) logprobs
    bias.py        per-occupation pronoun preference, the stereotype
                   association gap with a bootstrap confidence interval, and
                   an SVG chart; `hearth eval bias` writes JSON and the chart
    segments.py    explanations: a prompt cut into word, sentence or line
                   segments (UTF-8 byte offsets), each mapped to the tokens
                   it owns, and the occlusion arithmetic; the flow itself is
                   runtime/core/explain.py, the scoring native score.c
"""
