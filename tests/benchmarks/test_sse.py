"""The HTTP clients against a local server that replays crafted event streams in
llama-server's and the OpenAI completions format: no model, no peer."""
from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from benchmarks.load import LLAMA_SERVER, OPENAI_COMPLETIONS, drive_sse, summarize

# path -> the events it streams
STREAMS: dict[str, list[str]] = {
    # llama-server: `tokens` carries the exact tokens of each event; the last event has
    # stop and the server's own count
    "/completion": [json.dumps({"content": "Hi", "tokens": [5], "stop": False}),
                    json.dumps({"content": " there", "tokens": [6, 7], "stop": False}),
                    json.dumps({"content": "", "tokens": [], "stop": True,
                                "stop_type": "limit", "timings": {"predicted_n": 3}})],
    # OpenAI completions: one token a chunk, [DONE] at the end
    "/v1/completions": [json.dumps({"choices": [{"text": "a", "finish_reason": None}]}),
                        json.dumps({"choices": [{"text": "b", "finish_reason": None}]}),
                        json.dumps({"choices": [{"text": "", "finish_reason": "length"}]}),
                        "[DONE]"],
    # a server that dies mid-stream: two tokens, then the connection closes
    "/dies": [json.dumps({"choices": [{"text": "a", "finish_reason": None}]}),
              json.dumps({"choices": [{"text": "b", "finish_reason": None}]})],
}


class Replay(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        events = STREAMS[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for data in events:
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def replay() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Replay)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_llama_server_events_count_their_tokens_and_the_servers_total(replay: int) -> None:
    """Checked to fail: counting one token per event (int(bool(content))) instead of
    len(tokens) gives chunks of 1, 1."""
    records = drive_sse("127.0.0.1", replay, LLAMA_SERVER, ["p1", "p2"], 3)
    for rec in records:
        assert rec.error is None
        assert [k for _, k in rec.arrivals] == [1, 2]
        assert rec.tokens == 3 and rec.finish == "limit"
    assert summarize(2, records, 3).completed == 2


def test_openai_chunks_count_one_token_each_and_done_ends_the_stream(replay: int) -> None:
    """Checked to fail: counting the empty final chunk as a token gives 3 arrivals."""
    [rec] = drive_sse("127.0.0.1", replay, OPENAI_COMPLETIONS, ["p"], 2)
    assert rec.error is None
    assert [k for _, k in rec.arrivals] == [1, 1]
    assert rec.tokens is None and rec.generated == 2 and rec.finish == "length"
    assert summarize(1, [rec], 2).completed == 1


def test_a_stream_cut_off_before_its_final_event_is_an_error(replay: int) -> None:
    """Two tokens of two, but the server died before saying it was done: not completed.
    Checked to fail: without the `for … else` in `_sse_stream` it counts as completed."""
    api = type(OPENAI_COMPLETIONS)(path="/dies", body=OPENAI_COMPLETIONS.body,
                                   parse=OPENAI_COMPLETIONS.parse)
    [rec] = drive_sse("127.0.0.1", replay, api, ["p"], 2)
    assert rec.generated == 2
    assert rec.error == "the stream ended before its final event"
    assert summarize(1, [rec], 2).completed == 0
