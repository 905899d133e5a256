"""``ratls model encrypt|sign|verify|decrypt``: the model owner's bundle tools.

Output is one JSON object on stdout (what was done, the manifest summary, the signer's key id)
so scripts can read it; errors are one line on stderr with the exit code of ``ratls`` (1 the
bundle is bad or signed by someone else, 2 unusable input).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ratls.bundle import DEFAULT_CHUNK_SIZE, load_private_key, load_public_key
from ratls.errors import Reason, UsageError

from . import bundle_files as bf


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="model_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("encrypt", help="seal a model directory into an encrypted bundle")
    p.add_argument("src", metavar="SRC_DIR")
    p.add_argument("-o", "--output", required=True, metavar="BUNDLE")
    k = p.add_mutually_exclusive_group(required=True)
    k.add_argument("--key", metavar="KEYFILE", help="existing 32-byte content key (raw or hex)")
    k.add_argument("--key-out", metavar="KEYFILE", help="write a new random key here (mode 0600)")
    p.add_argument("--sign-key", metavar="PRIVATE.pem", help="also sign the bundle (same as `ratls model sign`)")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="plaintext bytes per chunk (default 1 MiB)")

    p = sub.add_parser("sign", help="sign a bundle with the owner's Ed25519 or EC P-384 key (replaces a signature)")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--key", required=True, metavar="PRIVATE.pem")

    p = sub.add_parser("verify", help="check the owner's signature (no content key needed)")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--signer", required=True, metavar="PUBLIC.pem")

    p = sub.add_parser("decrypt", help="decrypt a bundle into a directory (all or nothing)")
    p.add_argument("bundle", metavar="BUNDLE")
    p.add_argument("--key", required=True, metavar="KEYFILE")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p.add_argument("--signer", metavar="PUBLIC.pem", help="refuse unless the owner's signature verifies")


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(Reason.CONFIG_INVALID, f"cannot read {what} {path}: {e.strerror}") from e


def run(args: argparse.Namespace) -> int:
    cmd = args.model_command
    if cmd == "encrypt":
        signer = load_private_key(_read(args.sign_key, "signing key")) if args.sign_key else None
        key = bf.read_key_file(args.key) if args.key else bf.write_new_key_file(args.key_out)
        try:
            m = bf.encrypt_dir(args.src, args.output, key, signer=signer, chunk_size=args.chunk_size)
        except BaseException:
            if args.key_out:  # the new key sealed nothing: leave no stray key file behind
                bf.wipe_file(args.key_out)
            raise
        out = {"action": "encrypt", "bundle": args.output, **m.summary(), "signed": signer is not None}
        if args.key_out:
            out["key_file"] = args.key_out
    elif cmd == "sign":
        kid = bf.sign_file(args.bundle, load_private_key(_read(args.key, "signing key")))
        out = {"action": "sign", "bundle": args.bundle, "signer_key_id": kid}
    elif cmd == "verify":
        kid, reader = bf.verify_file(args.bundle, load_public_key(_read(args.signer, "signer key")))
        out = {
            "action": "verify",
            "bundle": args.bundle,
            "verified": True,
            "signer_key_id": kid,
            "bundle_id": reader.header.bundle_id.hex(),
        }
    else:
        signer = load_public_key(_read(args.signer, "signer key")) if args.signer else None
        res = bf.decrypt_to_dir(args.bundle, bf.read_key_file(args.key), args.output, signer=signer, require_signature=False)
        out = {"action": "decrypt", "output": str(res.out_dir), **res.manifest.summary(), "signer_key_id": res.signer_key_id}
    print(json.dumps(out, sort_keys=True))
    return 0
