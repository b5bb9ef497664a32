"""Encrypted local storage.

  sealed.py    the sealed file format: chunked streaming AEAD with key
               commitment and bound context (docs/formats/sealed-v1.md)
  keys.py      master key sources (passphrase, key file, systemd credential)
               and keyring.json; data keys are wrapped under the master key
  catalog.py   SQLite catalog (WAL, migrations, secure_delete)
  store.py     SealedStore: import, list, verify, decrypt into a sealed
               memfd for llama.cpp, crash-safe master-key rotation
  audit.py     the tamper-evident audit log with crypto-shreddable content
  paths.py     where the state directory is
  fsutil.py    temp-fsync-rename writes; failpoints.py crash points for tests

Open a store with SealedStore.open(state_dir, key_source(...)).
"""
