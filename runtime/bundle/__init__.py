"""The offline install bundle: build it on a connected machine, verify and
install it on an air-gapped one (packaging/install.sh)."""
