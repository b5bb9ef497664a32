"""Bad input gets a clear, typed error and the daemon stays up
(SECURITY-CASES 17, 18, 19)."""
from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from runtime._proto.hearth.v1 import inference_pb2 as ipb
from runtime._proto.hearth.v1 import models_pb2 as mpb
from tests.integration.conftest import Daemon


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        result = fn(*args, **kwargs)
        if hasattr(result, "__iter__") and not isinstance(result, str | bytes):
            list(result)
    return err.value


@pytest.mark.parametrize(("fields", "field_name"), [
    ({"temperature": -0.5}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"min_p": 2.0}, "min_p"),
    ({"repeat_penalty": 0.0}, "repeat_penalty"),
    ({"frequency_penalty": 3.0}, "frequency_penalty"),
    ({"presence_penalty": -3.0}, "presence_penalty"),
    ({"penalty_last_n": -2}, "penalty_last_n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": -5}, "max_tokens"),
    ({"stop": [""]}, "stop[0]"),
    ({"stop": ["a\0b"]}, "stop[0]"),
    ({"stop": ["s"] * 17}, "stop"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "", "prompt_tokens": [1, 999999]}, "prompt_tokens[1]"),
])
def test_out_of_range_fields_are_named(tiny_daemon: Daemon, fields: dict, field_name: str
                                       ) -> None:
    request = {"prompt": "hello", "max_tokens": 4, **fields}
    with tiny_daemon.client() as c:
        err = rpc_error(c.inference.Generate, ipb.GenerateRequest(**request))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field_name}:"), err.details()


def _raw_call(addr: str, method: str, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(addr) as ch:
        call = ch.unary_stream(method, request_serializer=lambda b: b,
                               response_deserializer=lambda b: b)
        return rpc_error(call, payload)


def test_invalid_utf8_prompt_is_invalid_argument(tiny_daemon: Daemon) -> None:
    payload = bytes([2 << 3 | 2, 4]) + b"ok\xc3\x28"
    err = _raw_call(tiny_daemon.tcp, "/hearth.v1.Inference/Generate", payload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "prompt: not valid UTF-8"


def test_invalid_utf8_chat_content_is_named(tiny_daemon: Daemon) -> None:
    msg = bytes([1 << 3 | 2, 4]) + b"user" + bytes([2 << 3 | 2, 2]) + b"\xff\xfe"
    payload = bytes([2 << 3 | 2, len(msg)]) + msg
    err = _raw_call(tiny_daemon.tcp, "/hearth.v1.Inference/Chat", payload)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "messages[0].content: not valid UTF-8"


def test_prompt_longer_than_the_context_states_token_counts(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        err = rpc_error(c.complete, "the patient " * 700, max_tokens=4)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "tokens do not fit the model's context of 1024 tokens" in err.details()
        err = rpc_error(c.complete, "hello", max_tokens=5000)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "prompt (2 tokens) + max_tokens (5000) = 5002 tokens" in err.details()


def test_bad_chat_roles_are_named(tiny_daemon: Daemon) -> None:
    with tiny_daemon.client() as c:
        err = rpc_error(c.chat, [("user", "hi"), ("wizard", "boo")], max_tokens=2)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.details().startswith("messages[1].role:")
        err = rpc_error(c.chat, [], max_tokens=2)
        assert err.details().startswith("messages:")


@pytest.mark.parametrize("name", ["../tiny", "/etc/passwd", "a/b", "..", ".hidden", "x\0y",
                                  "tiny.gguf/../../etc", "a" * 65])
def test_path_like_model_names_are_rejected(tiny_daemon: Daemon, name: str) -> None:
    with tiny_daemon.admin_client() as c:
        err = rpc_error(c.models.Load, mpb.LoadModelRequest(name=name))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert "not a valid name" in err.details()
        err = rpc_error(c.complete, "hi", model=name, max_tokens=2)
        # A control character makes a name invalid, not unknown (SECURITY-CASES 33).
        assert err.code() == (grpc.StatusCode.INVALID_ARGUMENT if "\0" in name
                              else grpc.StatusCode.NOT_FOUND)


def test_load_and_unload_arguments_are_checked(tiny_daemon: Daemon) -> None:
    with tiny_daemon.admin_client() as c:
        for request, field in ((mpb.LoadModelRequest(name="tiny2", n_parallel=0), "n_parallel"),
                               (mpb.LoadModelRequest(name="tiny2", n_ctx=-5), "n_ctx"),
                               (mpb.UnloadModelRequest(name="tiny", drain_timeout_seconds=-1),
                                "drain_timeout_seconds")):
            method = c.models.Load if isinstance(request, mpb.LoadModelRequest) else \
                c.models.Unload
            err = rpc_error(method, request)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.details().startswith(f"{field}:"), err.details()
        assert c.get_model("tiny").state == mpb.MODEL_STATE_READY


def test_symlink_out_of_the_models_dir_is_refused(daemon_factory, tiny_model: Path,  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(tiny_model.read_bytes())
    os.symlink(outside, models / "escape.gguf")
    os.symlink(tmp_path, models / "dir.gguf")
    (models / "good.gguf").write_bytes(tiny_model.read_bytes())
    d = daemon_factory("--listen", "127.0.0.1:0", "--listen", f"unix:{tmp_path}/h.sock",
                       "--models-dir", str(models))
    with d.admin_client() as c:
        assert c.list_models().available == ["good"]
        for name in ("escape", "dir"):
            err = rpc_error(c.models.Load, mpb.LoadModelRequest(name=name))
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a regular file" in err.details()
        status = c.load_model("good", n_ctx=1024, n_parallel=2)
        assert status.state == mpb.MODEL_STATE_READY
        assert c.complete("hi", max_tokens=2)[2].usage.completion_tokens == 2


def test_malformed_model_file_is_refused_and_the_daemon_survives(daemon_factory,  # type: ignore[no-untyped-def]
                                                                 tiny_model: Path,
                                                                 tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    good = tiny_model.read_bytes()
    (models / "truncated.gguf").write_bytes(good[: len(good) // 2])
    (models / "garbage.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 100)
    (models / "good.gguf").write_bytes(good)
    d = daemon_factory("--listen", "127.0.0.1:0", "--listen", f"unix:{tmp_path}/h.sock",
                       "--models-dir", str(models))
    with d.admin_client() as c:
        for name in ("truncated", "garbage"):
            err = rpc_error(c.models.Load, mpb.LoadModelRequest(name=name))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "not a valid GGUF file" in err.details()
            assert c.get_model(name).state == mpb.MODEL_STATE_FAILED
        c.load_model("good", n_ctx=512, n_parallel=1)
        assert c.complete("hi", model="good", max_tokens=2)[2].usage.completion_tokens == 2
