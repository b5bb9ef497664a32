"""Inference.Explain and `hearth explain` on the tiny daemon: the reply,
its cost as the engine counted it, the errors, the CLI's JSON and HTML."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from runtime.cli.explain import as_json, render_html, render_terminal
from tests.integration.conftest import Daemon

PROMPT = "The cat sat on the mat. The dog ran to the park.\nA bird sang. The sun was warm."


def hearth(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.cli.main", *args],
                          capture_output=True, text=True, timeout=300)


def test_explain_scores_every_segment_in_prompt_order(tiny_daemon: Daemon) -> None:
    """S segments, S scores, at most S + 1 prefills as the engine counted
    them, and the answer's log-probability is its greedy one."""
    with tiny_daemon.client() as c:
        reply = c.explain(PROMPT, unit="sentence", max_tokens=4)
        chunks = list(c.generate(PROMPT, max_tokens=4, temperature=0.0, logprobs=True))
    texts = [s.text for s in reply.segments]
    assert texts == ["The cat sat on the mat.", "The dog ran to the park.", "A bird sang.",
                     "The sun was warm."]
    raw = PROMPT.encode()
    assert all(raw[s.start:s.end].decode() == s.text for s in reply.segments)
    assert 1 <= reply.prefills <= len(texts) + 1
    assert reply.prefill_tokens > 0 and reply.seconds > 0
    assert reply.answer == "".join(ch.text for ch in chunks)
    greedy = [lp.logprob for ch in chunks for lp in ch.logprobs]
    if chunks[-1].finish_reason == 1:       # stop: the end token is not part of the answer
        greedy = greedy[:-1]
    assert reply.answer_logprob == pytest.approx(sum(greedy), abs=2e-3)
    assert any(abs(s.score) > 1e-4 for s in reply.segments)


def test_a_target_is_scored_instead_of_the_answer(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        reply = c.explain(PROMPT, unit="line", target=" the end")
    assert reply.answer == " the end"
    assert [s.text for s in reply.segments] == ["The cat sat on the mat. The dog ran to the park.",
                                                "A bird sang. The sun was warm."]
    assert reply.answer_logprob < 0


def test_an_unknown_adapter_is_not_found(tiny_daemon: Daemon) -> None:
    """Explain (and so `eval bias --adapter`) scores under the adapter it
    names; a name the model has not loaded is NOT_FOUND, never silently the
    base model.  Fails if ExplainRequest.adapter is dropped by the
    converter (the call then succeeds on the base model)."""
    with tiny_daemon.client() as c, pytest.raises(grpc.RpcError) as info:
        c.explain("a b", target=" c", adapter="no-such-adapter")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-adapter" in (info.value.details() or "")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   \n "}, "prompt"),
    ({"prompt": "a b", "unit": "paragraph"}, "unit"),
    ({"prompt": " ".join(["w"] * 300), "unit": "word"}, "max_segments"),
    ({"prompt": "a b", "target": ""}, "target"),
])
def test_bad_requests_are_invalid_arguments(tiny_daemon: Daemon, kwargs: dict,
                                            field: str) -> None:
    with tiny_daemon.client() as c, pytest.raises(grpc.RpcError) as info:
        c.explain(**kwargs)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (info.value.details() or "")


def test_cli_json_has_exactly_the_documented_shape(tiny_daemon: Daemon) -> None:
    """Fails if a key is added, dropped or renamed, or segments leave
    prompt order."""
    out = hearth("explain", "--addr", tiny_daemon.tcp, "--unit", "sentence", "--max-tokens", "3",
                 "--json", PROMPT)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc) == {"answer", "answer_logprob", "segments", "prefill_tokens", "seconds"}
    assert isinstance(doc["answer"], str) and isinstance(doc["answer_logprob"], float)
    assert isinstance(doc["prefill_tokens"], int) and isinstance(doc["seconds"], float)
    assert [set(s) for s in doc["segments"]] == [{"text", "score"}] * 4
    assert doc["segments"][0]["text"] == "The cat sat on the mat."
    assert all(isinstance(s["score"], float) for s in doc["segments"])


def test_cli_terminal_and_html(tiny_daemon: Daemon, tmp_path: Path) -> None:
    page = tmp_path / "explain.html"
    out = hearth("explain", "--addr", tiny_daemon.tcp, "--max-tokens", "3", "--html", str(page),
                 PROMPT)
    assert out.returncode == 0, out.stderr
    assert "\x1b[" not in out.stdout          # not a terminal: no colour codes
    assert "The dog ran to the park." in out.stdout and "prefills" in out.stdout
    assert 'title="score ' in page.read_text()


EVIL = SimpleNamespace(
    answer='</div><script>alert("a")</script>', answer_logprob=-1.5, prefill_tokens=7,
    prefills=3, seconds=0.25,
    segments=[SimpleNamespace(text='<img src=x onerror="alert(1)">', score=2.0, start=0, end=30),
              SimpleNamespace(text="Tom & \"Jerry\" 'x'", score=-1.0, start=31, end=48)])
EVIL_PROMPT = '<img src=x onerror="alert(1)"> Tom & "Jerry" \'x\''


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.titles: list[str] = []
        self.text: list[str] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name == "title" and value:
                self.titles.append(value)
            if name in ("src", "href") and value:
                self.urls.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_escapes_every_text_and_is_self_contained() -> None:
    """The prompt, the answer and the segments are data, never markup.
    Fails if html.escape is dropped from any of the three."""
    page = render_html(EVIL_PROMPT, EVIL)
    p = _Collect()
    p.feed(page)
    assert "script" not in p.tags and "img" not in p.tags
    assert not p.urls and "http" not in page          # no external assets
    text = "".join(p.text)
    assert '<img src=x onerror="alert(1)">' in text
    assert '</div><script>alert("a")</script>' in text
    assert p.titles == ["score +2.000 nats", "score -1.000 nats"]


def test_terminal_shading_only_on_a_terminal() -> None:
    plain = render_terminal(EVIL_PROMPT, EVIL, color=False)
    shaded = render_terminal(EVIL_PROMPT, EVIL, color=True)
    assert "\x1b[" not in plain and "\x1b[48;2;" in shaded
    assert as_json(EVIL)["segments"] == [{"text": '<img src=x onerror="alert(1)">',
                                          "score": 2.0},
                                         {"text": "Tom & \"Jerry\" 'x'", "score": -1.0}]


def test_the_page_renders_in_headless_chromium(tmp_path: Path) -> None:
    """A real browser parses the page and paints it (issue: the explanation
    page renders in a real headless browser)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium); the page "
                    "is checked by the HTML parser tests instead")
    page = tmp_path / "explain.html"
    page.write_text(render_html(EVIL_PROMPT, EVIL), encoding="utf-8")
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'title="score +2.000 nats"' in dom.stdout and "<script>" not in dom.stdout
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=900,700",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_the_segment_limit_is_configured_in_its_own_section() -> None:
    from runtime.config import ConfigError, parse_config

    assert parse_config({}).explain.max_segments == 256
    assert parse_config({"explain": {"max_segments": 16}}).explain.max_segments == 16
    with pytest.raises(ConfigError, match="explain"):
        parse_config({"explain": {"max_segments": 0}})
