"""The `hearth` command (main.py): one module per group of subcommands.

  serve.py     hearth serve: arguments -> Config; runtime/daemon.py runs it
  client.py    generate, chat, models list|get|load|unload, embed, tokenize:
               talk to a running daemon over gRPC
  storage.py   keys init|status|rotate, models import, data add,
               store list|verify, audit verify|export|erase|repair: local
               commands on the sealed state directory
  tokens.py    tokens create|list|revoke: bearer tokens in the store
  fed.py       fed ...: the federation, coordinator and site commands
  drift.py     drift status|reset|simulate: a daemon's drift watch
  drift_simulate.py  drift simulate: sites' daemons on loopback, traffic
               shifted to a new domain, alarms, the federation's answer
  drift_loop.py  its federation half: the coordinator service, the sites'
               training, the rounds and the gate as they happened
  bundle.py    bundle keygen|build|verify: the signed offline install bundle
  doctor.py    doctor: check the installation, one line per check
  energy.py    energy report: joules and gCO2e per model and adapter, from
               the audit log
  rpc_worker.py  rpc-worker: lend this box's devices to a daemon (ggml RPC)
  main.py      the parser, devices, default-model, exit-codes, and the one
               mapping from exception family to exit status
  state.py     --state-dir and the key options; opened_store(args), the one
               way a command opens (and closes) the sealed store
  exit_codes.py  the name commands import runtime/exit_codes.py by
"""
