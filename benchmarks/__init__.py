"""Hearth's benchmarks against llama.cpp peers (see benchmarks/README.md)."""
