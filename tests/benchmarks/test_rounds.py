"""Same treatment for every peer: interleaved rounds, the same repetitions, fresh prompts,
with fake peers (no model, no process)."""
from __future__ import annotations

from pathlib import Path

from benchmarks.lineup import DEFAULTS, HearthSettings, PeerSpec, Setup
from benchmarks.load import LevelResult
from benchmarks.peers import Peer
from benchmarks.procs import PeerUnavailable
from benchmarks.serving import measure, schedule, start_peers


def test_schedule_interleaves_every_peer_once_per_round_and_rotates() -> None:
    """Checked to fail: the old order (all of one peer's runs, then the next peer's) and
    an unrotated A B C A B C both break an assertion."""
    plan = schedule(["a", "b", "c"], [1, 4], 3, lambda k, n: True)
    assert len(plan) == 2 * 3 * 3
    rounds = [plan[i:i + 3] for i in range(0, len(plan), 3)]
    for i, rnd in enumerate(rounds):
        n, rep = rnd[0][:2]
        assert all(step[:2] == (n, rep) for step in rnd)
        assert sorted(k for _, _, k in rnd) == ["a", "b", "c"]
        assert (n, rep) == ([1, 4][i // 3], i % 3)
    assert [k for _, _, k in rounds[0]] == ["a", "b", "c"]
    assert [k for _, _, k in rounds[1]] == ["b", "c", "a"]
    assert [k for _, _, k in rounds[2]] == ["c", "a", "b"]
    # every peer goes first in some round
    assert {rnd[0][2] for rnd in rounds} == {"a", "b", "c"}


def test_schedule_leaves_a_peer_out_where_it_is_not_measured() -> None:
    """Checked to fail: ignoring `measured_at` schedules "one" at N=4."""
    plan = schedule(["one", "all"], [1, 4], 2, lambda k, n: k == "all" or n == 1)
    assert [(n, k) for n, _, k in plan] == [(1, "one"), (1, "all"), (1, "all"), (1, "one"),
                                            (4, "all"), (4, "all")]


class FakePeer(Peer):
    """Records each call in a shared log; fails at `fail_at` if given."""

    def __init__(self, key: str, log: list[tuple[str, int, int]],
                 fail_at: tuple[int, int] | None = None, ns: tuple[int, ...] | None = None,
                 fail_start: bool = False) -> None:
        setup = Setup(model=Path("m"), threads=1, max_tokens=4, ns=[1, 4], prompts={},
                      log_dir=Path("."))
        super().__init__(PeerSpec(key, key, DEFAULTS, key, ns), setup, HearthSettings())
        self.log, self.fail_at, self.fail_start = log, fail_at, fail_start
        self.stops = 0

    def start(self) -> None:
        if self.fail_start:
            raise PeerUnavailable("cannot start here")

    def run(self, n: int, rep: int) -> LevelResult:
        self.log.append((self.spec.key, n, rep))
        if (n, rep) == self.fail_at:
            raise PeerUnavailable("died")
        return LevelResult(n=n, agg_tok_s=float(10 * n + rep))

    def stop(self) -> None:
        self.stops += 1


def test_measure_gives_every_peer_the_same_repetitions_interleaved() -> None:
    """Each peer runs each (N, repetition) once, so each gets the prompts of every
    repetition; runs alternate between peers.  Checked to fail: looping peers outside the
    rounds (one block each) breaks the alternation assertion."""
    log: list[tuple[str, int, int]] = []
    peers: dict[str, Peer] = {k: FakePeer(k, log) for k in ("a", "b")}
    live = start_peers(peers, [1, 4])
    runs = measure(peers, live, [1, 4], 3)
    for key in ("a", "b"):
        assert sorted((n, rep) for k, n, rep in log if k == key) == [
            (1, 0), (1, 1), (1, 2), (4, 0), (4, 1), (4, 2)]
        assert [lv.agg_tok_s for lv in runs[key][4]] == [40.0, 41.0, 42.0]
    assert all(log[i][0] != log[i + 1][0] for i in range(0, len(log), 2))
    assert peers["a"].result.info["seconds_measured"] >= 0


def test_a_peer_that_fails_is_stopped_left_out_and_the_rest_go_on() -> None:
    """Checked to fail: without the `status != "ok"` skip the dead peer is run again;
    without the stop it is left running."""
    log: list[tuple[str, int, int]] = []
    dying = FakePeer("dying", log, fail_at=(1, 1))
    peers: dict[str, Peer] = {"dying": dying, "fine": FakePeer("fine", log),
                              "absent": FakePeer("absent", log, fail_start=True),
                              "only-n8": FakePeer("only-n8", log, ns=(8,))}
    live = start_peers(peers, [1, 4])
    assert live == ["dying", "fine"]
    assert peers["absent"].result.status == "failed"
    assert peers["only-n8"].result.status == "skipped"
    runs = measure(peers, live, [1, 4], 2)
    assert dying.result.status == "failed" and dying.result.reason == "died"
    assert dying.stops == 1
    assert [(n, rep) for k, n, rep in log if k == "dying"] == [(1, 0), (1, 1)]
    assert len(runs["fine"][1]) == 2 and len(runs["fine"][4]) == 2
    assert list(runs["dying"]) == [1] and len(runs["dying"][1]) == 1
