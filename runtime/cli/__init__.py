"""The `hearth` command.

  hearth serve        run the daemon (serve.py)
  hearth generate     stream a completion          \
  hearth chat         interactive chat REPL         |
  hearth models ...   list, get, load, unload       |  client.py: talk to a
  hearth embed        print embeddings as JSON      |  running daemon over gRPC
  hearth tokenize     print token ids               /
  hearth devices      what ggml sees (CPU, GPUs)
  hearth default-model   assemble the default model file
  hearth exit-codes   what each exit status means
"""
