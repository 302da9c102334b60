"""TLS for tests: a throwaway certificate, and client options that accept it."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from support.server import free_port

# websocket-client options for a wss:// server with that certificate.
NO_VERIFY = {"sslopt": {"cert_reqs": ssl.CERT_NONE, "check_hostname": False}}


def self_signed(directory: Path) -> tuple[str, str]:
    """A throwaway certificate for 127.0.0.1; returns (key_file, cert_file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_file, cert_file = directory / "key.pem", directory / "cert.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_file), str(cert_file)


def tls_listener(directory: Path) -> tuple[int, dict[str, object]]:
    """A free port and the config's `ssl:` section of a TLS listener on it, with a throwaway
    certificate written into `directory`."""
    key_file, cert_file = self_signed(directory)
    port = free_port()
    section = {
        "enabled": True,
        "host": f"127.0.0.1:{port}",
        "key_file": key_file,
        "cert_file": cert_file,
    }
    return port, section
