"""The ``ratls`` console script.

Subcommands are registered explicitly below (name -> module). Each module defines
``configure(parser: argparse.ArgumentParser) -> None`` and ``run(args) -> int``. Modules are
imported only when their subcommand runs, so ``ratls inspect`` never pays for aiohttp or Triton.

Exit codes follow ``ratls inspect``'s contract everywhere: 0 ok, 1 refused/failed, 2 unusable
input (one-line reason on stderr).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import RatlsError, UsageError

#: name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "inspect": ("client.inspect", "verify an RA-TLS certificate, report or quote and explain the verdict"),
    "sim": ("ratls.io.simdir", "create or show the simulated TEE's local signing chain"),
    "sidecar": ("sidecar.cli", "run the TEE-side RA-TLS sidecar (or `sidecar unseal`, the init step)"),
    "proxy": ("proxy.cli", "run the client-side verifying forward proxy"),
    "client": ("client.load", "send Triton / TF Serving inference load through the proxy"),
    "keybroker": ("keybroker.cli", "run the model owner's key broker"),
    "model": ("keybroker.model_cli", "encrypt, sign, verify and decrypt model bundles"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="ratls", description="Attested TLS for confidential inference.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        if argv and argv[0] == name:
            importlib.import_module(module).configure(p)
    args = parser.parse_args(argv)
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except UsageError as e:
        print(f"ratls {args.command}: {e}", file=sys.stderr)
        return 2
    except RatlsError as e:
        print(f"ratls {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
