#!/usr/bin/env python3
"""Text generation from Hearth with the stock Triton client, tritonclient.grpc.

Written as a Triton user writes it: nothing here knows about Hearth beyond
its gRPC address and a model name.  The demo streams text:

    python triton_client_script.py 127.0.0.1:50051 tiny stream "Once upon a time"

test_kserve.py runs it in a subprocess (tritonclient and Hearth's own
generated `inference` messages cannot share one Python process) with
`check <scenario>...`, and reads the JSON it prints.
"""
from __future__ import annotations

import json
import queue
import sys
from functools import partial

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def llm_inputs(prompt, stream, sampling=None, exclude_input=None):
    """The inputs of Triton's LLM backends: text_input, stream and optional
    sampling_parameters (a JSON string)."""
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode("utf-8")], dtype=np.object_))
    flag = grpcclient.InferInput("stream", [1], "BOOL")
    flag.set_data_from_numpy(np.array([stream], dtype=bool))
    inputs = [text, flag]
    if sampling is not None:
        params = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
        params.set_data_from_numpy(np.array([json.dumps(sampling).encode()], dtype=np.object_))
        inputs.append(params)
    if exclude_input is not None:
        exclude = grpcclient.InferInput("exclude_input_in_output", [1], "BOOL")
        exclude.set_data_from_numpy(np.array([exclude_input], dtype=bool))
        inputs.append(exclude)
    return inputs


def text_of(result):
    return result.as_numpy("text_output")[0].decode("utf-8")


def parameters_of(result):
    """A response's parameters as plain values."""
    out = {}
    for key, param in result.get_response().parameters.items():
        out[key] = getattr(param, param.WhichOneof("parameter_choice"))
    return out


def generate(client, model, prompt, sampling, **kwargs):
    """One request, one response with the whole text."""
    result = client.infer(model, llm_inputs(prompt, False, sampling, **kwargs),
                          request_id="req-1")
    return {"text": text_of(result), "id": result.get_response().id,
            "parameters": parameters_of(result)}


def stream_generate(client, model, prompt, sampling):
    """Streams one request; collects each response until the final one."""
    responses = queue.Queue()

    def on_response(responses, result, error):
        responses.put(error if error is not None else result)

    client.start_stream(callback=partial(on_response, responses))
    try:
        client.async_stream_infer(model, llm_inputs(prompt, True, sampling),
                                  request_id="stream-1", enable_empty_final_response=True)
        received = []
        while True:
            item = responses.get(timeout=120)
            if isinstance(item, InferenceServerException):
                raise item
            response = item.get_response()
            final = response.parameters["triton_final_response"].bool_param
            text = text_of(item) if response.outputs else None
            received.append({"text": text, "final": final, "id": response.id,
                             "parameters": parameters_of(item)})
            if text:
                print(text, end="", flush=True, file=sys.stderr)   # as it arrives
            if final:
                return received
    finally:
        client.stop_stream()


# ---- scenarios the integration tests run ----------------------------------

GREEDY = {"temperature": 0, "max_tokens": 600, "ignore_eos": True}


def error_of(call):
    try:
        call()
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return None


def check_server(client, model):
    metadata = client.get_server_metadata(as_json=True)
    return {"live": client.is_server_live(), "ready": client.is_server_ready(),
            "metadata": metadata}


def check_model(client, model):
    return {"ready": client.is_model_ready(model),
            "unknown_ready": client.is_model_ready("no-such-model"),
            "metadata": client.get_model_metadata(model, as_json=True),
            "config": client.get_model_config(model, as_json=True)}


def check_infer(client, model):
    return {"default": generate(client, model, "hello world", GREEDY),
            "excluded": generate(client, model, "hello world", GREEDY, exclude_input=True),
            "stream": stream_generate(client, model, "hello world", GREEDY)}


def check_stream_without_streaming(client, model):
    """stream=false on the streaming RPC: one response, flagged final."""
    responses = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    inputs = llm_inputs("hello", False, {"max_tokens": 8, "ignore_eos": True})
    client.async_stream_infer(model, inputs, request_id="whole")
    result, error = responses.get(timeout=120)
    client.stop_stream()
    assert error is None, error
    return {"text": text_of(result), "parameters": parameters_of(result)}


def check_stream_errors(client, model):
    """A bad request on a stream is answered with an error; the next
    request on the same stream is served."""
    responses = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    client.async_stream_infer(model, llm_inputs("hi", True, {"temprature": 0.5}),
                              request_id="bad", enable_empty_final_response=True)
    _, error = responses.get(timeout=120)
    client.async_stream_infer(model, llm_inputs("hi", True, {"max_tokens": 4}),
                              request_id="good", enable_empty_final_response=True)
    good = []
    while True:
        result, problem = responses.get(timeout=120)
        assert problem is None, problem
        good.append(result.get_response().id)
        if result.get_response().parameters["triton_final_response"].bool_param:
            break
    client.stop_stream()
    return {"error": str(error), "good_ids": good}


def check_errors(client, model):
    def infer(inputs, name=model, **kwargs):
        return lambda: client.infer(name, inputs, **kwargs)

    wrong_type = grpcclient.InferInput("text_input", [1], "INT32")
    wrong_type.set_data_from_numpy(np.array([7], dtype=np.int32))
    only_stream = llm_inputs("x", False)[1:]
    bad_json = llm_inputs("x", False)
    params = grpcclient.InferInput("sampling_parameters", [1], "BYTES")
    params.set_data_from_numpy(np.array([b"{not json"], dtype=np.object_))
    bad_json.append(params)
    return {
        "unknown_model": error_of(infer(llm_inputs("x", False), name="no-such-model")),
        "unknown_version": error_of(infer(llm_inputs("x", False), model_version="2")),
        "wrong_datatype": error_of(infer([wrong_type])),
        "missing_text_input": error_of(infer(only_stream)),
        "bad_sampling_json": error_of(infer(bad_json)),
        "unknown_sampling_key": error_of(infer(llm_inputs("x", False, {"temprature": 1}))),
        "out_of_range": error_of(infer(llm_inputs("x", False, {"temperature": -1}))),
        "unknown_parameter": error_of(infer(llm_inputs("x", False), parameters={"tmp": 1})),
        "stream_on_unary": error_of(infer(llm_inputs("x", True))),
        "metadata_unknown_model": error_of(lambda: client.get_model_metadata("no-such-model")),
        "still_serving": generate(client, model, "hello world",
                                  {"max_tokens": 4, "ignore_eos": True}),
    }


def check_structured(client, model):
    """JSON-schema output and logprobs, asked for in sampling_parameters."""
    schema = {"type": "object", "properties": {"drug": {"enum": ["aspirin", "heparin"]},
                                               "dose_mg": {"type": "integer"}},
              "required": ["drug", "dose_mg"], "additionalProperties": False}
    sampling = {"temperature": 0, "max_tokens": 200, "logprobs": 2,
                "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    return {"schema": schema,
            "json": generate(client, model, "order:", sampling, exclude_input=True),
            "bad_grammar": error_of(lambda: client.infer(model, llm_inputs(
                "x", False, {"grammar": "root ::= missing"})))}


def check_statistics(client, model):
    return client.get_inference_statistics(model, as_json=True)


def check_repository(client, model):
    """Load a model by name from the server's models directory, use it,
    unload it."""
    before = client.get_model_repository_index(as_json=True)
    client.load_model(model)
    client.load_model(model)                      # already loaded: nothing to do
    loaded = {"ready": client.is_model_ready(model),
              "index": client.get_model_repository_index(as_json=True),
              "text": generate(client, model, "hi", {"max_tokens": 3})["text"]}
    client.unload_model(model)
    return {"before": before, "loaded": loaded,
            "after_ready": client.is_model_ready(model),
            "after": client.get_model_repository_index(as_json=True),
            "unload_again": error_of(lambda: client.unload_model(model)),
            "load_unknown": error_of(lambda: client.load_model("no-such-model"))}


def main(argv):
    url, model, command, *rest = argv
    with grpcclient.InferenceServerClient(url) as client:
        if command == "stream":           # the demo
            stream_generate(client, model, rest[0] if rest else "Once upon a time",
                            {"temperature": 0.7, "max_tokens": 64})
            print(file=sys.stderr)
            return
        results = {name: globals()[f"check_{name}"](client, model) for name in rest}
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
