"""What docs/operations.md promises an operator, on the real daemon: the
metrics port stays on loopback, JSON logs, SIGHUP applying changed model
settings, retrying a failed load and dropping cached token lookups,
streams cut off once the grace period is over, and who may administer
models over the unix socket (root, the daemon's uid, `[auth] admins`)."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import pytest

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime._proto.hearth.v1 import models_pb2 as mpb
from runtime.client import Credentials, HearthClient
from runtime.exit_codes import ExitCode
from tests.integration.conftest import Daemon, start_daemon, wait_for
from tests.integration.test_sealed_serving import hearth


def reloads_done(d: Daemon) -> int:
    return d.log().count("reloaded the configuration:")


def hup_and_wait(d: Daemon) -> None:
    done = reloads_done(d)
    d.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: reloads_done(d) > done, 60), d.log()


def model_state(c: HearthClient, name: str) -> int | None:
    return next((m.state for m in c.list_models().models if m.name == name), None)


def test_a_metrics_port_off_loopback_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    """`server.metrics_listen` serves loopback only: another address stops
    the start with a CONFIG exit naming it.  Deleting the is_local_address
    check in cli/serve.py's start_metrics makes the daemon start instead
    (and this test time out waiting for the exit)."""
    config = tmp_path / "hearth.toml"
    config.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nmetrics_listen = "0.0.0.0:0"\n\n'
                      f'[models.tiny]\npath = "{tiny_model}"\nn_ctx = 512\nn_parallel = 1\n')
    for args in (["--config", str(config)],
                 ["--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                  "--metrics-listen", "192.0.2.1:9464"]):
        proc = subprocess.run([sys.executable, "-m", "runtime.cli.main", "serve", *args],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == ExitCode.CONFIG, proc.stderr
        assert "server.metrics_listen:" in proc.stderr
        assert "is not a loopback address" in proc.stderr


def test_log_format_json_is_one_object_per_line_with_the_request_id(
        tmp_path: Path, tiny_model: Path) -> None:
    """Every line the daemon writes with --log-format json is a JSON object
    (llama.cpp's own lines too, through the core's log hook), and a
    request's line carries its x-request-id, client and token counts.  With
    the text format the first line already fails json.loads."""
    d = start_daemon(["--model", f"tiny={tiny_model}", "--listen", "127.0.0.1:0",
                      "--parallel", "1", "--ctx", "512", "--threads", "1",
                      "--log-format", "json", "--log-level", "debug"], tmp_path)
    try:
        with d.client() as c:
            chunks = list(c.inference.Generate(
                ipb.GenerateRequest(prompt="hello", max_tokens=4, ignore_eos=True),
                metadata=(("x-request-id", "json-log-1"),), timeout=60))
            assert chunks[-1].usage.completion_tokens == 4
    finally:
        assert d.stop() == 0, d.log()
    lines = [line for line in d.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all(isinstance(r, dict) and {"ts", "level", "msg"} <= set(r) for r in records)
    assert {r["logger"] for r in records} >= {"hearth.server"}
    mine = [r for r in records if r.get("request_id") == "json-log-1"]
    assert len(mine) == 1
    assert mine[0]["msg"] == "generate tiny ok length"
    assert mine[0]["completion_tokens"] == 4 and mine[0]["client"]


def write_models(config: Path, models: dict[str, tuple[Path, int, int]], extra: str = "") -> None:
    text = '[server]\nlisten = ["127.0.0.1:0"]\n' + extra
    for name, (path, n_parallel, n_ctx) in models.items():
        text += (f'\n[models.{name}]\npath = "{path}"\nn_parallel = {n_parallel}\n'
                 f"n_ctx = {n_ctx}\nthreads = 1\n")
    config.write_text(text)


def test_sighup_applies_changed_model_settings_and_retries_a_failed_load(
        tmp_path: Path, tiny_model: Path) -> None:
    """A model whose settings changed is loaded again with them (2 slots,
    then 3); a model whose file is broken fails to load and is tried again
    at the next SIGHUP, once the file is fixed.  Checked: with _apply_models
    not retrying FAILED models, b stayed failed and this failed."""
    config, broken = tmp_path / "hearth.toml", tmp_path / "b.gguf"
    write_models(config, {"a": (tiny_model, 2, 1024)})
    d = start_daemon(["--config", str(config)], tmp_path)
    try:
        with d.client() as c:
            assert c.get_model("a").slots_total == 2
            broken.write_bytes(b"GGUF" + bytes(60))
            write_models(config, {"a": (tiny_model, 3, 1536), "b": (broken, 1, 512)})
            hup_and_wait(d)
            assert c.get_model("a").slots_total == 3
            assert c.get_model("a").state == mpb.MODEL_STATE_READY
            assert model_state(c, "b") == mpb.MODEL_STATE_FAILED
            assert "reload: model b did not load" in d.log()
            shutil.copyfile(tiny_model, broken)
            hup_and_wait(d)
            assert model_state(c, "b") == mpb.MODEL_STATE_READY
            assert c.complete("x", model="b", max_tokens=2)[2].usage.completion_tokens == 2
            assert c.get_model("a").slots_total == 3
    finally:
        assert d.stop() == 0, d.log()


def test_a_revoked_token_is_refused_at_once_after_sighup(tmp_path: Path,
                                                         tiny_model: Path) -> None:
    """The daemon runs with token lookups cached for an hour (CACHE_S set by
    a sitecustomize), so a revoked token is still accepted until SIGHUP
    drops the cache; right after the reload it is UNAUTHENTICATED.
    Checked: with reload.py not calling forget_cached, the token kept
    working and this failed."""
    state, key = tmp_path / "state", tmp_path / "master.key"
    common = ["--state-dir", str(state), "--key-file", str(key)]
    hearth("keys", "init", *common)
    token = hearth("tokens", "create", "doomed", "--models", "*", *common).stdout.strip()
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import runtime.auth.tokens as tokens\ntokens.CACHE_S = 3600.0\n")
    config = tmp_path / "hearth.toml"
    write_models(config, {"tiny": (tiny_model, 1, 512)}, "\n[auth]\nrequire = true\n")
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    d = start_daemon(["--config", str(config), *common], tmp_path,
                     env={"PYTHONPATH": path})
    try:
        with HearthClient(d.tcp, timeout=30, credentials=Credentials(token=token)) as c:
            assert c.complete("hi", max_tokens=1)[2].usage.completion_tokens == 1
            hearth("tokens", "revoke", "doomed", *common)
            time.sleep(1.5)            # past the default cache time: still cached here
            assert c.complete("hi", max_tokens=1)[2].usage.completion_tokens == 1
            hup_and_wait(d)
            with pytest.raises(grpc.RpcError) as err:
                c.complete("hi", max_tokens=1)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        assert d.stop() == 0, d.log()


def test_streams_still_running_after_the_grace_period_are_cut_off(
        tmp_path: Path, tiny_model: Path) -> None:
    """SIGTERM: a long stream keeps getting tokens during the grace period
    (2 s) and is then cut off with an error, far short of its 4000 tokens;
    the daemon exits 0.  Fails if drain waited for the stream to finish
    (it would get all 4000) or cut it at once (no tokens after SIGTERM)."""
    config = tmp_path / "hearth.toml"
    write_models(config, {"tiny": (tiny_model, 1, 4096)}, "grace_period_s = 2\n")
    d = start_daemon(["--config", str(config)], tmp_path)
    got: list[tuple[float, int]] = []
    outcome: dict[str, object] = {}

    def stream() -> None:
        with HearthClient(d.tcp, timeout=120) as c:
            try:
                for chunk in c.generate("hello", max_tokens=4000, temperature=0.0,
                                        ignore_eos=True):
                    got.append((time.monotonic(), len(chunk.token_ids)))
                outcome["code"] = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                outcome["code"] = exc.code()

    t = threading.Thread(target=stream)
    t.start()
    try:
        assert wait_for(lambda: bool(got), 60)
        term_at = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        t.join(120)
        assert d.proc.wait(60) == 0, d.log()
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
    tokens = sum(n for _, n in got)
    after_term = sum(n for when, n in got if when > term_at)
    assert outcome["code"] != grpc.StatusCode.OK, outcome
    assert outcome["code"] in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                               grpc.StatusCode.ABORTED), outcome
    assert after_term > 0 and tokens < 4000, (after_term, tokens)
    assert "draining" in d.log()


NOBODY = 65534


def connect_as(uid: int, path: str) -> socket.socket:
    """A unix socket connected by a child process running as `uid`, so the
    server's SO_PEERCRED sees that uid; the parent keeps the connection."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:                                   # only setuid and connect, then leave
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            sock.connect(path)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"could not connect as uid {uid}"
    return sock


class RelayAs:
    """A unix socket of our own whose every connection is relayed over a
    connection to `target` made as `uid`: a gRPC client of this process
    reaches the daemon as that user."""

    def __init__(self, directory: Path, target: str, uid: int) -> None:
        self.path = directory / f"as-{uid}.sock"
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen()
        self.target, self.uid = target, uid
        self.sockets = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                down, _ = self.listener.accept()
                up = connect_as(self.uid, self.target)
                self.sockets += [down, up]
                for a, b in ((down, up), (up, down)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_admins_and_the_socket_rule_for_root(tiny_model: Path) -> None:
    """Over the unix socket, root (here also the daemon's own uid) may load
    and unload models without being listed; another uid may not, until
    `[auth] admins` names it, which a SIGHUP applies at once.  Checked: with
    the authenticator granting admin to every socket uid the first
    PERMISSION_DENIED is not raised; with `admins` ignored the last load is
    refused."""
    directory = Path(tempfile.mkdtemp(prefix="hearth-admins-"))
    try:
        directory.chmod(0o755)           # the other uid must reach the socket
        sock = directory / "hearth.sock"
        config = directory / "hearth.toml"

        def write(admins: str) -> None:
            config.write_text(f'[server]\nlisten = ["127.0.0.1:0", "unix:{sock}"]\n\n'
                              f'[auth]\nsocket_mode = "0666"\nadmins = [{admins}]\n\n'
                              f'[models.tiny]\npath = "{tiny_model}"\nn_ctx = 512\n'
                              "n_parallel = 1\nthreads = 1\n")

        write("")
        d = start_daemon(["--config", str(config)], directory)
        relay = RelayAs(directory, str(sock), NOBODY)
        try:
            with HearthClient(f"unix:{relay.path}", timeout=30) as nobody:
                # the other uid may use the model, not administer it
                assert nobody.complete("hi", max_tokens=1)[2].usage.completion_tokens == 1
                with pytest.raises(grpc.RpcError) as err:
                    nobody.unload_model("tiny")
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                assert err.value.details().startswith(f"uid:{NOBODY} may not ")
            with HearthClient(f"unix:{sock}", timeout=60) as root:
                assert root.unload_model("tiny").state == mpb.MODEL_STATE_UNLOADED
                assert root.load_model("tiny").state == mpb.MODEL_STATE_READY
            write(f'"uid:{NOBODY}"')
            hup_and_wait(d)
            with HearthClient(f"unix:{relay.path}", timeout=60) as nobody:
                assert nobody.unload_model("tiny").state == mpb.MODEL_STATE_UNLOADED
                assert nobody.load_model("tiny").state == mpb.MODEL_STATE_READY
            assert f"client=uid:{NOBODY}" in d.log()
        finally:
            relay.close()
            assert d.stop() == 0, d.log()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another uid")
def test_the_daemons_own_uid_may_administer_over_the_socket(tiny_model: Path) -> None:
    """The rule's other half: the uid the daemon runs as may administer
    without being listed.  The daemon cannot run as another user here (the
    interpreter lives under /root), so it is told it runs as 65534 (its
    os.getuid, by a sitecustomize) and 65534 connects.  Checked: with the
    authenticator's `uid in (0, os.getuid())` reduced to `uid == 0` the
    unload is PERMISSION_DENIED."""
    directory = Path(tempfile.mkdtemp(prefix="hearth-own-uid-"))
    try:
        directory.chmod(0o755)
        sock = directory / "hearth.sock"
        site = directory / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(f"import os\nos.getuid = lambda: {NOBODY}\n")
        config = directory / "hearth.toml"
        config.write_text(f'[server]\nlisten = ["127.0.0.1:0", "unix:{sock}"]\n\n'
                          '[auth]\nsocket_mode = "0666"\n\n'
                          f'[models.tiny]\npath = "{tiny_model}"\nn_ctx = 512\n'
                          "n_parallel = 1\nthreads = 1\n")
        path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
        d = start_daemon(["--config", str(config)], directory, env={"PYTHONPATH": path})
        relay = RelayAs(directory, str(sock), NOBODY)
        try:
            with HearthClient(f"unix:{relay.path}", timeout=60) as own:
                assert own.unload_model("tiny").state == mpb.MODEL_STATE_UNLOADED
                assert own.load_model("tiny").state == mpb.MODEL_STATE_READY
        finally:
            relay.close()
            assert d.stop() == 0, d.log()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
