"""Generated at build time from proto/ (see setup.py build_proto)."""
