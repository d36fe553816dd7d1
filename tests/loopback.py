"""Loopback helpers: one HTTP client for the tests' own calls to the emulators' test
hooks (``/emulator/...``), and TLS files for a loopback server.

``httpx.get()`` and its siblings build a client, and with it an SSL context (tens of
milliseconds of loading CA certificates), on every call, even to plain HTTP on loopback;
the fixtures make such calls around every test.
"""

from __future__ import annotations

from pathlib import Path

import httpx

http = httpx.Client()


def tls_files(folder: Path, host: str) -> tuple[Path, Path, Path]:
    """A certificate for ``host`` from a fresh test CA: (certificate chain, key, CA
    bundle), written to ``folder``; a client trusts it with ``SSL_CERT_FILE=bundle``."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert(host)
    certfile, keyfile, bundle = folder / "c.pem", folder / "k.pem", folder / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(bundle))
    return certfile, keyfile, bundle
