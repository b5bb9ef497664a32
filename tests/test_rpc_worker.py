"""ggml RPC pieces that need no worker: the listen policy of `hearth
rpc-worker`, the rpc_workers / tensor_split config keys, and the probe's
errors (it must fail with an error naming the worker where ggml's own client
would abort the process)."""
from __future__ import annotations

import socket
import struct
import threading

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


class FakeWorker:
    """A loopback server speaking the RPC framing (command byte, u64 size,
    payload; answers as u64 size, payload) with a chosen version."""

    def __init__(self, version: tuple[int, int, int], memory: list[tuple[int, int]]) -> None:
        self.version, self.memory = version, memory
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            f = conn.makefile("rwb")
            while header := f.read(9):
                cmd, size = header[0], struct.unpack("<Q", header[1:])[0]
                payload = f.read(size)
                if cmd == 14:       # HELLO: version, padding, 24 capability bytes
                    answer = bytes([*self.version, 0]) + bytes(24)
                elif cmd == 15:     # DEVICE_COUNT
                    answer = struct.pack("<I", len(self.memory))
                elif cmd == 11:     # GET_DEVICE_MEMORY
                    answer = struct.pack("<QQ", *self.memory[struct.unpack("<I", payload)[0]])
                else:
                    return
                f.write(struct.pack("<Q", len(answer)) + answer)
                f.flush()


def test_probe_reads_version_devices_and_memory() -> None:
    """Fails if the probe's framing or field order is wrong."""
    fake = FakeWorker((7, 0, 0), [(3 << 30, 4 << 30), (1 << 30, 2 << 30)])
    info = rpc.probe(fake.endpoint)
    assert info.protocol == "7.0.0" and info.free_bytes == 4 << 30
    assert [(d.free_bytes, d.total_bytes) for d in info.devices] == [(3 << 30, 4 << 30),
                                                                     (1 << 30, 2 << 30)]


def test_probe_refuses_another_protocol_version() -> None:
    """ggml's client would abort the daemon on this worker; the probe names it."""
    fake = FakeWorker((9, 0, 0), [(1, 1)])
    with pytest.raises(errors.FailedPrecondition, match=f"{fake.endpoint} speaks protocol 9.0.0"):
        rpc.probe(fake.endpoint)
