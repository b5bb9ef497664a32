"""ggml RPC pieces that need no worker: the listen policy of `hearth
rpc-worker`, the rpc_workers / tensor_split config keys, and the probe's
errors (it must fail with an error naming the worker where ggml's own client
would abort the process)."""
from __future__ import annotations

import socket

import pytest

from runtime import errors
from runtime.cli.main import main
from runtime.config import parse_config
from runtime.models.manager import engine_params
from runtime.native import rpc


@pytest.mark.parametrize("addr", ["127.0.0.1:50052", "127.0.0.5:1"])
def test_loopback_needs_no_flag(addr: str) -> None:
    rpc.check_listen(addr, private_link=False)


def test_other_addresses_need_the_private_link_statement() -> None:
    """Fails if a LAN address is accepted without --private-link."""
    with pytest.raises(errors.InvalidArgument, match="private-link"):
        rpc.check_listen("10.44.0.2:50052", private_link=False)
    rpc.check_listen("10.44.0.2:50052", private_link=True)


@pytest.mark.parametrize("addr", ["0.0.0.0:50052", "localhost:50052", "[::1]:50052",
                                  "10.0.0.1", "10.0.0.1:0", "224.0.0.1:5"])
def test_wildcards_names_and_ipv6_are_refused_even_on_a_private_link(addr: str) -> None:
    """The worker binds exactly one IPv4 address (ggml's server is IPv4 only)."""
    with pytest.raises(errors.InvalidArgument):
        rpc.check_listen(addr, private_link=True)


def test_cli_refuses_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    """`hearth rpc-worker --listen 192.168.1.5:50052` exits with the reason
    and never reaches ggml (which would bind and serve)."""
    code = main(["rpc-worker", "--listen", "192.168.1.5:50052"])
    assert code != 0 and "--private-link" in capsys.readouterr().err


def test_config_keys() -> None:
    cfg = parse_config({"models": {"m": {"path": "/x.gguf", "rpc_workers": ["10.44.0.2:50052",
                                                                            "gpu-box:50052"],
                                         "tensor_split": [3, 1]}}})
    m = cfg.models["m"]
    assert m.rpc_workers == ("10.44.0.2:50052", "gpu-box:50052") and m.tensor_split == (3.0, 1.0)
    params, reason = engine_params(m, None)
    assert params.rpc_workers == m.rpc_workers and params.n_gpu_layers == -1
    assert "10.44.0.2:50052" in reason
    for bad in ({"rpc_workers": "10.0.0.1:1"}, {"rpc_workers": ["10.0.0.1"]},
                {"rpc_workers": ["a:1", "a:1"]}, {"rpc_workers": ["[::1]:1"]},
                {"tensor_split": [0, 0]}, {"tensor_split": [-1.0]}, {"tensor_split": "1,1"}):
        with pytest.raises(errors.ConfigError, match=f"models.m.{next(iter(bad))}"):
            parse_config({"models": {"m": {"path": "/x.gguf", **bad}}})


def test_probe_of_a_closed_port_names_the_worker() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(errors.FailedPrecondition, match=f"{endpoint} is not reachable"):
        rpc.probe(endpoint)


def test_probe_of_a_silent_listener_times_out_as_silent() -> None:
    """A port that accepts but never answers (another client holds the
    worker, or it is not one) is WorkerSilent, within the timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
        with pytest.raises(rpc.WorkerSilent, match=endpoint):
            rpc.probe(endpoint, timeout_s=0.3)
