"""Throwaway OpenPGP signing keys for the tests of signed transfers (tests/test_transfer.py, the air-gap proof).

Never for real use: no passphrase, and the key lives in whatever home the caller gives.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def throwaway_signing_key(home: Path, uid: str) -> str:
    """An ed25519 signing key without passphrase for uid in the gpg home directory home: its fingerprint."""
    env = {**os.environ, "GNUPGHOME": str(home)}
    cmd = ["gpg", "--batch", "--passphrase", "", "--quick-gen-key", uid, "ed25519", "sign", "never"]
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    out = subprocess.run(
        ["gpg", "--batch", "--with-colons", "--list-keys", uid], env=env, check=True, capture_output=True, text=True
    )
    return next(line.split(":")[9] for line in out.stdout.splitlines() if line.startswith("fpr:"))
