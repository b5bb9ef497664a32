"""Model files and the models a daemon serves.

  source.py         FileSource or StoredSource: where bytes come from, typed
  gguf_file.py      strict GGUF header reader, run before llama.cpp sees a file
  opener.py         open_source: a source to one checked descriptor (no swap, no FIFO)
  probe.py          the first load of new bytes runs in a child process (llama.cpp asserts)
  gpu_fit.py        n_gpu_layers = "auto": layers and KV that fit in free GPU memory
  manager.py        ModelManager: names -> sources, load / unload / drain, state
  default_model.py  Gemma 3 270M and SmolLM2-135M-Instruct from their PyPI packages
  tiny.py           a tiny random llama GGUF for tests and demos
"""
