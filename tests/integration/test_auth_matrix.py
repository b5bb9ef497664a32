"""Authentication and authorization against the real daemon (SECURITY-CASES
15, 16): tokens, mTLS, the unix socket's uid, ACLs, and refused listeners."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from runtime._proto.hearth.v1 import models_pb2 as mpb
from runtime.client import Credentials, HearthClient
from tests.auth.certs import CA
from tests.integration.conftest import Daemon, start_daemon
from tests.integration.test_sealed_serving import hearth


def code_of(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__"):
            list(result)
    return err.value.code(), err.value.details() or ""


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[dict]:
    """A daemon with two models, tokens required on TCP, mTLS on a second
    port, and a unix socket; plus the tokens and certificates to call it."""
    base = tmp_path_factory.mktemp("auth")
    state, key = base / "state", base / "master.key"
    common = ["--state-dir", str(state), "--key-file", str(key)]
    hearth("keys", "init", *common)
    for name in ("tiny", "other"):
        hearth("models", "import", str(tiny_model), "--name", name, *common)
    ward = hearth("tokens", "create", "ward", "--models", "tiny", *common).stdout.strip()
    ops = hearth("tokens", "create", "ops", "--models", "*", "--admin", *common).stdout.strip()
    doomed = hearth("tokens", "create", "doomed", "--models", "*", *common).stdout.strip()
    ca, rogue = CA(base, "hearth-test-ca"), CA(base, "rogue-ca")
    server = ca.issue("localhost", server=True)
    sock = base / "hearth.sock"
    config = base / "hearth.toml"
    config.write_text(f"""
[server]
listen = ["127.0.0.1:0", "unix:{sock}"]

[auth]
require = true
socket_mode = "0660"

[tls]
listen = ["127.0.0.1:0"]
cert_file = "{server.cert}"
key_file = "{server.key}"
client_ca_file = "{ca.pem}"

[acl]
"cert:ward-app" = ["tiny"]
"uid:{os.getuid()}" = ["tiny", "other"]

[models.tiny]
store = true
n_ctx = 1024
n_parallel = 2
[models.other]
store = true
n_ctx = 1024
n_parallel = 1
""")
    d = start_daemon(["--config", str(config), *common], base)
    yield {"daemon": d, "ward": ward, "ops": ops, "doomed": doomed, "ca": ca, "rogue": rogue,
           "common": common, "sock": f"unix:{sock}"}
    assert d.stop() == 0, d.log()


def client(s: dict, creds: Credentials | None = None, addr: str | None = None) -> HearthClient:
    d: Daemon = s["daemon"]
    return HearthClient(addr or d.tcp, timeout=30, credentials=creds)


def tls_addr(s: dict) -> str:
    return next(a for a in s["daemon"].addresses if a.startswith("tls:"))


def test_15_no_token_is_unauthenticated_before_any_handler(secured: dict) -> None:
    with client(secured, Credentials(token=secured["ops"])) as admin:
        before = admin.get_model("tiny").requests_finished
    with client(secured) as c:
        code, details = code_of(c.complete, "hi", model="tiny", max_tokens=2)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "credentials required" in details
        code, _ = code_of(c.get_model, "tiny")
        assert code == grpc.StatusCode.UNAUTHENTICATED
    with client(secured, Credentials(token=secured["ops"])) as admin:
        assert admin.get_model("tiny").requests_finished == before


@pytest.mark.parametrize("token", ["", "hth_nonsense", "Bearer", "hth_000000000000_" + "x" * 43])
def test_15_wrong_tokens_are_unauthenticated(secured: dict, token: str) -> None:
    with client(secured, Credentials(token=token or " ")) as c:
        code, _ = code_of(c.complete, "hi", model="tiny", max_tokens=2)
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_a_valid_token_works_and_its_acl_holds(secured: dict) -> None:
    with client(secured, Credentials(token=secured["ward"])) as c:
        assert c.complete("hi", model="tiny", max_tokens=2)[2].usage.completion_tokens == 2
        code, details = code_of(c.complete, "hi", model="other", max_tokens=2)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details == "token:ward may not use model 'other'"
        # A model it may not use is refused before its existence is looked up.
        code, _ = code_of(c.complete, "hi", model="no-such-model", max_tokens=2)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert [m.name for m in c.list_models().models] == ["tiny"]
        # Without a model name the error lists only models it may use.
        code, details = code_of(c.complete, "hi", max_tokens=2)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "(tiny)" in details and "other" not in details
        code, details = code_of(c.models.Load, mpb.LoadModelRequest(name="x"))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "may not load models" in details


def test_an_admin_token_may_unload_and_load(secured: dict) -> None:
    with client(secured, Credentials(token=secured["ops"])) as c:
        assert c.unload_model("other").state == mpb.MODEL_STATE_UNLOADED
        assert c.load_model("other", n_ctx=1024, n_parallel=1).state == mpb.MODEL_STATE_READY


def test_15_a_revoked_token_stops_working_while_the_daemon_runs(secured: dict) -> None:
    with client(secured, Credentials(token=secured["doomed"])) as c:
        assert c.complete("hi", model="tiny", max_tokens=1)[2].usage.completion_tokens == 1
        hearth("tokens", "revoke", "doomed", *secured["common"])
        time.sleep(1.2)
        code, _ = code_of(c.complete, "hi", model="tiny", max_tokens=1)
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_mtls_identity_and_acl(secured: dict) -> None:
    ca: CA = secured["ca"]
    ward = ca.issue("ward-app")
    creds = Credentials(ca_file=str(ca.pem), cert_file=str(ward.cert), key_file=str(ward.key))
    with client(secured, creds, tls_addr(secured)) as c:
        assert c.complete("hi", model="tiny", max_tokens=2)[2].usage.completion_tokens == 2
        code, details = code_of(c.complete, "hi", model="other", max_tokens=2)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details == "cert:ward-app may not use model 'other'"


def test_15_client_certificate_from_another_ca_never_reaches_a_handler(secured: dict) -> None:
    ca, rogue = secured["ca"], secured["rogue"]
    impostor = rogue.issue("ward-app")
    creds = Credentials(ca_file=str(ca.pem), cert_file=str(impostor.cert),
                        key_file=str(impostor.key))
    with client(secured, Credentials(token=secured["ops"])) as admin:
        before = admin.get_model("tiny").requests_finished
    with client(secured, creds, tls_addr(secured)) as c:
        code, _ = code_of(c.complete, "hi", model="tiny", max_tokens=2)
    # The TLS handshake refuses the certificate: no connection, so no handler
    # (docs/operations.md: "other CAs never get a connection").  A handler
    # answering UNAUTHENTICATED would mean the connection was accepted.
    assert code == grpc.StatusCode.UNAVAILABLE
    with client(secured, Credentials(token=secured["ops"])) as admin:
        assert admin.get_model("tiny").requests_finished == before
    no_cert = Credentials(ca_file=str(ca.pem))
    with client(secured, no_cert, tls_addr(secured)) as c:
        code, _ = code_of(c.complete, "hi", model="tiny", max_tokens=2)
    assert code == grpc.StatusCode.UNAVAILABLE


def test_the_unix_socket_identifies_the_callers_uid(secured: dict) -> None:
    sock = secured["sock"]
    with client(secured, addr=sock) as c:
        assert c.complete("hi", model="tiny", max_tokens=2)[2].usage.completion_tokens == 2
        assert {m.name for m in c.list_models().models} == {"tiny", "other"}
    assert oct(os.stat(sock[len("unix:"):]).st_mode & 0o777) == "0o660"
    log = secured["daemon"].log()
    assert f"client=uid:{os.getuid()}" in log


def test_refused_listeners(tmp_path: Path, tiny_model: Path) -> None:
    config = tmp_path / "open.toml"
    config.write_text(f"""
[server]
listen = ["0.0.0.0:0"]
[models.tiny]
path = "{tiny_model}"
""")
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "serve", "--config",
                           str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "refusing to listen on 0.0.0.0:0 without authentication" in proc.stderr
    ca = CA(tmp_path, "ca")
    server = ca.issue("localhost", server=True)
    config.write_text(f"""
[server]
listen = ["127.0.0.1:0"]
[tls]
listen = ["0.0.0.0:0"]
cert_file = "{server.cert}"
key_file = "{server.key}"
[models.tiny]
path = "{tiny_model}"
""")
    proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "serve", "--config",
                           str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "without client_ca_file" in proc.stderr


def test_open_listener_with_required_tokens_starts(tmp_path: Path, tiny_model: Path) -> None:
    state, key = tmp_path / "state", tmp_path / "k"
    hearth("keys", "init", "--state-dir", str(state), "--key-file", str(key))
    config = tmp_path / "tokens.toml"
    config.write_text(f"""
[server]
listen = ["0.0.0.0:0"]
[auth]
require = true
[models.tiny]
path = "{tiny_model}"
n_ctx = 512
n_parallel = 1
""")
    d = start_daemon(["--config", str(config), "--state-dir", str(state), "--key-file",
                      str(key)], tmp_path)
    try:
        with HearthClient(d.tcp.replace("0.0.0.0", "127.0.0.1"), timeout=30) as c:
            code, _ = code_of(c.complete, "hi", max_tokens=1)
        assert code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert d.stop() == 0
