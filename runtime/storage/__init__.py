"""Encrypted local storage.

  sealed.py    the sealed file format: chunked streaming AEAD with key
               commitment and bound context (docs/formats/sealed-v1.md)
  keys.py      master key sources (passphrase, key file, systemd credential)
               and keyring.json; data keys are wrapped under the master key
  catalog.py   SQLite catalog (WAL, migrations, secure_delete), every table
               authenticated under the master key (SECURITY-CASES 29)
  catalog_auth.py  table digests, the MAC'd head and its copy in
               catalog.counter: what catalog.py checks at open and per write
  store.py     SealedStore: import, list, verify, decrypt into a sealed
               memfd for llama.cpp, crash-safe master-key rotation
  audit.py     the tamper-evident audit log with crypto-shreddable content,
               and verify_audit, which trusts nothing it reads
  paths.py     where the state directory is
  fsutil.py    temp-fsync-rename writes (the one atomic writer, used beyond
               storage too); failpoints.py crash points and injected
               full disks for tests

Open a store with SealedStore.open(state_dir, key_source(...)).
"""
