"""`hearth bundle keygen|build|verify`: the offline install bundle."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from runtime.config_values import check_config_name
from runtime.errors import ConfigError
from runtime.exit_codes import ExitCode

# runtime.bundle (tarfile, importlib.metadata, signing) is imported by each
# command: every `hearth` run, the daemon's too, builds this parser.

SOURCE = Path(__file__).resolve().parents[2]


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists():
        raise ConfigError(f"{path} exists; not overwriting a signing key")
    from runtime.bundle.manifest import create_signing_key, fingerprint

    key = create_signing_key(path)
    print(fingerprint(key.public_key()))
    _err(f"wrote {path} (mode 0600). Give the fingerprint above to the sites, by a channel "
         "other than the bundle itself; they pass it to install.sh --fingerprint")
    return ExitCode.OK


def _models(args: argparse.Namespace) -> list[tuple[str, Path]]:
    out = []
    for spec in args.model:
        name, sep, path = spec.partition("=")
        if not sep:
            raise ConfigError(f"--model {spec}: expected NAME=PATH")
        check_config_name(name, "--model")
        out.append((name, Path(path)))
    if args.default_model:
        from runtime.models.default_model import prepare_default_models

        out += prepare_default_models(args.models_dir, quiet=True)
    if len({n for n, _ in out}) != len(out):
        raise ConfigError("--model: the same name twice")
    return out


def cmd_build(args: argparse.Namespace) -> int:
    from runtime.bundle.build import BundleBuilder, BundleSpec

    spec = BundleSpec(out=Path(args.out), source=Path(args.source),
                      signing_key=Path(args.signing_key), flavour=args.flavour,
                      models=_models(args), log=_err)
    built = BundleBuilder(spec).build()
    print(built.path)
    _err(f"{built.flavour} bundle: {built.files} files, {built.size / 2**20:.1f} MiB, "
         f"signed by key {built.fingerprint}")
    _err(f"install on the site with: install.sh --offline {built.path.name} "
         f"--fingerprint {built.fingerprint}")
    return ExitCode.OK


def cmd_verify(args: argparse.Namespace) -> int:
    from runtime.bundle.build import read_info, unpack
    from runtime.bundle.manifest import verify_bundle

    with tempfile.TemporaryDirectory(prefix="hearth-verify-") as tmp:
        root = unpack(Path(args.bundle), Path(tmp))
        entries = verify_bundle(root, args.fingerprint)
        info = read_info(root)
    print(f"ok: hearth {info['hearth_version']} ({info['flavour']}, {info['python']}, "
          f"{info['platform']}), {len(entries)} files, models: "
          f"{', '.join(info['models']) or 'none'}")
    return ExitCode.OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bundle", help="offline install bundle: keygen, build, verify")
    bs = b.add_subparsers(dest="bundle_command", required=True)
    k = bs.add_parser("keygen", help="create the Ed25519 key that signs bundles")
    k.add_argument("path", help="where to write the private key (PEM, mode 0600)")
    k.set_defaults(func=cmd_keygen)
    c = bs.add_parser("build", help="build a signed bundle (needs the package index)")
    c.add_argument("--out", default="dist", help="a .tar path or a folder (default: dist/)")
    c.add_argument("--signing-key", required=True, help="Ed25519 private key (bundle keygen)")
    c.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="include this GGUF (repeatable); installed into the sealed store")
    c.add_argument("--default-model", action="store_true",
                   help="include the default models (Gemma 3 270M Q4_K_M, "
                        "SmolLM2-135M-Instruct Q4_1)")
    c.add_argument("--models-dir", default="models", help="where the default model is kept")
    c.add_argument("--flavour", default="auto", choices=["auto", "cpu", "cuda"],
                   help="insist on the llama-cpp-python build installed here")
    c.add_argument("--source", default=str(SOURCE), help="the Hearth source tree")
    c.set_defaults(func=cmd_build)
    v = bs.add_parser("verify", help="check a bundle's signature and hashes")
    v.add_argument("bundle")
    v.add_argument("--fingerprint", action="append", default=[], required=True,
                   help="SHA-256 of the signing key to trust (repeatable)")
    v.set_defaults(func=cmd_verify)
