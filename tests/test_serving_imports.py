"""What `hearth serve` loads: the daemon with its default configuration must
not import the libraries of features that are off or of other commands.
Each costs the serving process resident memory for as long as it runs
(numpy about 15 MB, aiohttp about 11 MB; benchmarks/rss.py measures the
whole), and the serving benchmark's goal is at most 150 MB beyond the model
and its KV cache."""
from __future__ import annotations

import json
import subprocess
import sys

# Off by default, or needed by other commands only.
NOT_SERVING = ("numpy", "scipy", "matplotlib", "torch", "gguf", "aiohttp",
               "prometheus_client", "runtime.drift.service", "runtime.http",
               "runtime.server.metrics", "runtime.federation.site_agent",
               "runtime.federation.state", "runtime.federation.train", "runtime.distill.job",
               "runtime.bundle.build")

PROBE = """
import json, sys
from runtime.cli.main import parser
from runtime.config import Config
from runtime.daemon import build_daemon
from runtime.energy.weights import WindowSample, fit

parser().parse_args(["serve", "--model", "m=/nonexistent.gguf"])
config = Config()
assert config.energy.enabled and not config.drift.enabled and not config.server.http_listen
build_daemon(config)
fit([WindowSample(1.0 + i % 3, 10.0 * i, 2.0 * i, 5.0 + i) for i in range(40)])
print(json.dumps(sorted(sys.modules)))
"""


def test_the_serving_path_leaves_heavy_modules_unloaded() -> None:
    """Parses a serve command line, composes a daemon from the default
    configuration (energy accounting on, its weights fitted) and lists the
    modules loaded.  Fails on 26ed925, where the daemon imported numpy
    (drift/service.py, energy/weights.py), aiohttp (http/),
    prometheus_client (server/metrics.py) and the federation site agent,
    and the CLI imported runtime.distill.job and runtime.bundle.build."""
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True).stdout
    loaded = set(json.loads(out.splitlines()[-1]))
    found = sorted(m for m in loaded
                   if any(m == h or m.startswith(h + ".") for h in NOT_SERVING))
    assert found == []
