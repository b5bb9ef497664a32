"""`hearth explain`: which parts of a prompt the answer depends on.

The daemon scores each segment by occlusion (docs/explain.md); this prints
the prompt shaded by score on a terminal (plain text otherwise), writes a
self-contained HTML heat map with the scores on hover (--html), or prints
JSON (--json).
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from runtime.cli.client import add_common, connect
from runtime.exit_codes import ExitCode


class Scored(Protocol):
    """An ExplainSegment (hearth.v1) or anything shaped like one."""

    text: str
    score: float
    start: int
    end: int


def as_json(reply: Any) -> dict[str, Any]:
    """The --json document: exactly these keys, segments in prompt order."""
    return {"answer": reply.answer, "answer_logprob": reply.answer_logprob,
            "segments": [{"text": s.text, "score": s.score} for s in reply.segments],
            "prefill_tokens": reply.prefill_tokens, "seconds": reply.seconds}


def pieces(prompt: str, segments: Sequence[Scored]) -> Iterator[tuple[str, Scored | None]]:
    """The prompt as (text, segment) runs in order; gaps have no segment."""
    raw = prompt.encode("utf-8")
    pos = 0
    for s in segments:
        if s.start > pos:
            yield raw[pos:s.start].decode("utf-8", errors="replace"), None
        yield raw[s.start:s.end].decode("utf-8", errors="replace"), s
        pos = s.end
    if pos < len(raw):
        yield raw[pos:].decode("utf-8", errors="replace"), None


def shade(score: float, scale: float) -> tuple[int, int, int]:
    """A background colour: white at 0, red for support (positive), blue
    against (negative), full strength at |score| = scale."""
    t = min(1.0, abs(score) / scale) if scale > 0 else 0.0
    fade = round(255 * (1 - 0.75 * t))
    return (255, fade, fade) if score > 0 else (fade, fade, 255)


def _scale(segments: Sequence[Scored]) -> float:
    return max((abs(s.score) for s in segments), default=0.0)


def render_terminal(prompt: str, reply: Any, color: bool) -> str:
    segments = list(reply.segments)
    scale = _scale(segments)
    lines = []
    if color:
        out = []
        for text, seg in pieces(prompt, segments):
            if seg is None:
                out.append(text)
            else:
                r, g, b = shade(seg.score, scale)
                out.append(f"\x1b[48;2;{r};{g};{b}m\x1b[30m{text}\x1b[0m")
        lines += ["".join(out), ""]
    lines.append(f"answer: {reply.answer!r}  (log-probability {reply.answer_logprob:.3f})")
    lines.append("score (nats; positive supports the answer)  segment")
    for s in segments:
        lines.append(f"{s.score:+9.3f}  {s.text}")
    lines.append(f"cost: {reply.prefills} prefills, {reply.prefill_tokens} prompt tokens, "
                 f"{reply.seconds:.2f} s")
    return "\n".join(lines)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Hearth explanation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #111; }}
.prompt {{ white-space: pre-wrap; line-height: 1.9; font-size: 1.1em; border: 1px solid #ccc;
           padding: 1em; border-radius: 4px; }}
.seg {{ border-radius: 3px; padding: 0.1em 0; }}
.answer {{ white-space: pre-wrap; background: #f4f4f4; padding: 0.5em 1em; }}
table {{ border-collapse: collapse; margin-top: 1em; }}
td {{ padding: 0.15em 0.8em; border-bottom: 1px solid #eee; vertical-align: top; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.legend span {{ padding: 0.1em 0.6em; margin-right: 0.5em; }}
</style></head>
<body>
<h1>Why this answer?</h1>
<p class="legend">Occlusion scores: how much leaving a segment out lowers the log-probability
of the answer (nats). <span style="background: rgb(255,64,64)">supports</span>
<span style="background: rgb(64,64,255); color: #fff">works against</span>
Hover over a segment for its score.</p>
<div class="prompt">{prompt}</div>
<h2>Answer</h2>
<div class="answer">{answer}</div>
<p>log P(answer | prompt) = {logprob:.3f}. Cost: {prefills} prefills, {tokens} prompt tokens,
{seconds:.2f} s.</p>
<table><tr><th>score</th><th>segment</th></tr>
{rows}
</table>
</body></html>
"""


def render_html(prompt: str, reply: Any) -> str:
    """A self-contained page (no external assets); every text escaped."""
    segments = list(reply.segments)
    scale = _scale(segments)
    body = []
    for text, seg in pieces(prompt, segments):
        if seg is None:
            body.append(html.escape(text))
            continue
        r, g, b = shade(seg.score, scale)
        body.append(f'<span class="seg" style="background: rgb({r},{g},{b})" '
                    f'title="score {seg.score:+.3f} nats">{html.escape(text)}</span>')
    rows = "\n".join(f'<tr><td class="num">{s.score:+.3f}</td><td>{html.escape(s.text)}</td></tr>'
                     for s in segments)
    return _PAGE.format(prompt="".join(body), answer=html.escape(reply.answer),
                        logprob=reply.answer_logprob, prefills=reply.prefills,
                        tokens=reply.prefill_tokens, seconds=reply.seconds, rows=rows)


def cmd_explain(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    with connect(args) as client:
        reply = client.explain(prompt, args.model, args.unit, args.target, args.max_tokens)
    if args.html:
        Path(args.html).write_text(render_html(prompt, reply), encoding="utf-8")
    if args.json:
        print(json.dumps(as_json(reply), ensure_ascii=False))
    else:
        print(render_terminal(prompt, reply, sys.stdout.isatty()))
        if args.html:
            print(f"wrote {args.html}")
    return ExitCode.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="score each part of PROMPT by how much the answer "
                                       "depends on it (occlusion; '-' reads stdin)")
    p.add_argument("prompt")
    add_common(p)
    p.add_argument("--unit", choices=["word", "sentence", "line"], default="sentence",
                   help="segment the prompt by word, sentence (default) or line")
    p.add_argument("--target", default=None,
                   help="explain this continuation instead of the model's greedy answer")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="most tokens of the greedy answer (server default 32)")
    p.add_argument("--html", default="", metavar="FILE",
                   help="also write a self-contained HTML heat map to FILE")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_explain)
