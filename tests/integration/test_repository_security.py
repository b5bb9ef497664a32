"""The model repository against the real daemon: least privilege for callers
without credentials (SECURITY-CASES 27), model names hidden from callers
that may not use them (health, the OpenAI gateway), and a crafted GGUF that
made llama.cpp abort (SECURITY-CASES 26) refused while the daemon serves on."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from runtime._proto.hearth.v1 import models_pb2 as mpb
from runtime._proto.kserve.v2 import inference_pb2 as kpb
from runtime._proto.kserve.v2 import inference_pb2_grpc as kgrpc
from runtime.client import Credentials, HearthClient
from runtime.models.tiny import write_tiny_model
from tests.integration.conftest import Daemon, start_daemon
from tests.integration.test_openai_gateway import post_json, ready_info
from tests.integration.test_sealed_serving import hearth

SERVING = health_pb2.HealthCheckResponse.SERVING
UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


def code_of(fn, *args, **kwargs) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kwargs)
    return err.value.code(), err.value.details() or ""


def _models_dir(tmp_path: Path, tiny_model: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    (models / "spare.gguf").write_bytes(tiny_model.read_bytes())
    return models


def test_anonymous_loopback_callers_use_models_but_do_not_manage_them(
        tmp_path: Path, tiny_model: Path) -> None:
    """Fails on e3a5e70: an anonymous caller on 127.0.0.1 loaded and unloaded
    models (checked by running this test there: Load succeeded)."""
    models = _models_dir(tmp_path, tiny_model)
    sock = tmp_path / "hearth.sock"
    d = start_daemon(["--model", f"tiny={tiny_model}", "--models-dir", str(models),
                      "--listen", "127.0.0.1:0", "--listen", f"unix:{sock}", "--ctx", "1024",
                      "--parallel", "1", "--threads", "1"], tmp_path)
    try:
        with HearthClient(d.tcp, timeout=60) as c:
            assert c.complete("hi", max_tokens=2)[2].usage.completion_tokens == 2
            assert c.list_models().available == ["spare"]
            for call, request in (
                    (c.models.Load, mpb.LoadModelRequest(name="spare")),
                    (c.models.Unload, mpb.UnloadModelRequest(name="tiny")),
                    (c.models.SetAdapter, mpb.SetAdapterRequest(model="tiny", adapter="a",
                                                                stored_name="a")),
                    (c.models.RemoveAdapter, mpb.RemoveAdapterRequest(model="tiny",
                                                                      adapter="a"))):
                code, details = code_of(call, request)
                assert code == grpc.StatusCode.PERMISSION_DENIED, details
                assert "anonymous_admin" in details
            kserve = kgrpc.GRPCInferenceServiceStub(c.channel)
            code, _ = code_of(kserve.RepositoryModelLoad,
                              kpb.RepositoryModelLoadRequest(model_name="spare"))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert c.get_model("tiny").state == mpb.MODEL_STATE_READY
        # The daemon's own uid on the unix socket is still an admin.
        with HearthClient(f"unix:{sock}", timeout=60) as c:
            assert c.load_model("spare", n_ctx=512, n_parallel=1).state == mpb.MODEL_STATE_READY
    finally:
        assert d.stop() == 0, d.log()


def test_the_config_may_grant_anonymous_callers_admin_rights(tmp_path: Path,
                                                             tiny_model: Path) -> None:
    """Fails on e3a5e70: the key did not exist (the config was refused)."""
    models = _models_dir(tmp_path, tiny_model)
    config = tmp_path / "hearth.toml"
    config.write_text(f'[server]\nlisten = ["127.0.0.1:0"]\nmodels_dir = "{models}"\n'
                      "[auth]\nanonymous_admin = true\n")
    d = start_daemon(["--config", str(config)], tmp_path)
    try:
        with HearthClient(d.tcp, timeout=60) as c:
            assert c.load_model("spare", n_ctx=512, n_parallel=1).state == mpb.MODEL_STATE_READY
            assert c.unload_model("spare").state == mpb.MODEL_STATE_UNLOADED
    finally:
        assert d.stop() == 0, d.log()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[dict]:
    """Tokens required; two models; a token that may use only `tiny`; the
    OpenAI gateway on."""
    base = tmp_path_factory.mktemp("guarded")
    common = ["--state-dir", str(base / "state"), "--key-file", str(base / "master.key")]
    hearth("keys", "init", *common)
    for name in ("tiny", "other"):
        hearth("models", "import", str(tiny_model), "--name", name, *common)
    ward = hearth("tokens", "create", "ward", "--models", "tiny", *common).stdout.strip()
    config = base / "hearth.toml"
    config.write_text("""
[server]
listen = ["127.0.0.1:0"]
http_listen = "127.0.0.1:0"
[auth]
require = true
[models.tiny]
store = true
n_ctx = 512
n_parallel = 1
[models.other]
store = true
n_ctx = 512
n_parallel = 1
""")
    d = start_daemon(["--config", str(config), *common], base)
    yield {"daemon": d, "ward": ward, "http": ready_info(base)["http"]}
    assert d.stop() == 0, d.log()


def _health(d: Daemon, service: str, token: str = "") -> tuple[grpc.StatusCode | None, int]:
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(d.tcp) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30,
                               metadata=metadata)
        except grpc.RpcError as exc:
            return exc.code(), -1
        return None, reply.status


def test_per_model_health_reveals_no_names_without_credentials(guarded: dict) -> None:
    """A model is answered like a name that does not exist unless the
    caller may use it.  Fails on e3a5e70: Check("tiny") answered SERVING
    without credentials (checked by running this test there)."""
    d: Daemon = guarded["daemon"]
    assert _health(d, "") == (None, SERVING)
    assert _health(d, "hearth.v1.Inference") == (None, SERVING)
    missing = _health(d, "no-such-model")
    assert missing[0] == grpc.StatusCode.NOT_FOUND
    assert _health(d, "tiny") == missing
    assert _health(d, "tiny", "hth_wrong") == missing
    assert _health(d, "tiny", guarded["ward"]) == (None, SERVING)
    assert _health(d, "other", guarded["ward"]) == missing
    with grpc.insecure_channel(d.tcp) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="tiny"), timeout=30)
        assert next(watch).status == UNKNOWN
        watch.cancel()


def test_the_openai_ambiguity_error_names_only_usable_models(guarded: dict) -> None:
    """Fails on e3a5e70: the error listed every loaded model ("other, tiny")
    to a token that may use only tiny."""
    status, _, body = post_json(guarded["http"], "/v1/completions",
                                {"prompt": "hi", "max_tokens": 1},
                                Authorization=f"Bearer {guarded['ward']}")
    assert status == 400, body
    message = body["error"]["message"]
    assert "tiny" in message and "other" not in message
    d: Daemon = guarded["daemon"]
    with HearthClient(d.tcp, timeout=30, credentials=Credentials(token=guarded["ward"])) as c:
        code, details = code_of(c.get_model, "")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "other" not in details


def test_a_model_that_made_llama_cpp_abort_is_refused_and_the_daemon_serves_on(
        tmp_path: Path, tiny_model: Path) -> None:
    """A vocabulary with a duplicate entry.  Fails on e3a5e70: `hearth models
    import` accepted it, and Models.Load killed the daemon with SIGABRT
    (checked by running this test there)."""
    models = tmp_path / "models"
    write_tiny_model(models / "crafted.gguf", rename_tokens={300: "▁the"})
    sock = tmp_path / "hearth.sock"
    d = start_daemon(["--model", f"tiny={tiny_model}", "--models-dir", str(models),
                      "--listen", f"unix:{sock}", "--ctx", "1024", "--parallel", "1",
                      "--threads", "1"], tmp_path)
    try:
        with HearthClient(f"unix:{sock}", timeout=60) as c:
            code, details = code_of(c.load_model, "crafted")
            assert code == grpc.StatusCode.FAILED_PRECONDITION, details
            assert "duplicate tokens" in details
            assert c.get_model("crafted").state == mpb.MODEL_STATE_FAILED
            assert c.complete("hi", model="tiny", max_tokens=2)[2].usage.completion_tokens == 2
        assert d.proc.poll() is None
    finally:
        assert d.stop() == 0, d.log()
    common = ["--state-dir", str(tmp_path / "state"), "--key-file", str(tmp_path / "k")]
    hearth("keys", "init", *common)
    proc = hearth("models", "import", str(models / "crafted.gguf"), "--name", "crafted",
                  *common, check=False)
    assert proc.returncode != 0 and "duplicate tokens" in proc.stderr, proc.stderr


def test_a_configured_model_that_made_llama_cpp_abort_stops_the_start_cleanly(
        tmp_path: Path) -> None:
    """Exit status MODEL_LOAD with the reason, not a crash.  Fails on
    e3a5e70: the daemon died of SIGABRT (return code -6; checked by running
    this test there)."""
    crafted = write_tiny_model(tmp_path / "crafted.gguf", rename_tokens={300: "▁the"})
    proc = hearth("serve", "--model", f"crafted={crafted}", "--listen", "127.0.0.1:0",
                  check=False)
    assert proc.returncode == 4, proc.stderr[-2000:]     # ExitCode.MODEL_LOAD
    assert "duplicate tokens" in proc.stderr
