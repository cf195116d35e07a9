"""TLS helpers for D4: self-signed server certificates (tests, demo) and SSL contexts.

d4-core's server reads one PEM file holding the certificate followed by the private key
(``server/server.pem``); ``write_self_signed_pem`` produces the same layout.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed_pem(common_name: str = "d4-bridge", hosts: tuple[str, ...] = ("localhost", "127.0.0.1", "::1"),
                    days: int = 365) -> bytes:
    """Return a PEM with a self-signed certificate followed by its (unencrypted) EC P-256 key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_self_signed_pem(path: str | Path, **kwargs: object) -> Path:
    """Write ``self_signed_pem(**kwargs)`` to ``path`` (mode 0600) and return the path."""
    p = Path(path)
    p.write_bytes(self_signed_pem(**kwargs))  # type: ignore[arg-type]
    p.chmod(0o600)
    return p


def server_context(pem: str | Path) -> ssl.SSLContext:
    """Server-side context from a PEM holding certificate and key (d4-core's server.pem)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(pem))
    # A D4 server never writes to its sensors. TLS 1.3 session tickets would be the only bytes
    # it sends, and a sensor that never reads them resets the connection when it closes,
    # which makes the server's kernel drop the sensor's last, still unread data.
    ctx.num_tickets = 0
    return ctx


def client_context(ca: str | Path | None = None, insecure: bool = False) -> ssl.SSLContext:
    """Client-side context.

    ``ca``: verify the server against this CA bundle (d4-goclient's ``rootCA.crt`` with ``-cc``).
    ``insecure``: accept any certificate (d4-goclient's default, needed for self-signed servers).
    Neither: verify against the system trust store.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca is not None:
        ctx.load_verify_locations(cafile=str(ca))
    else:
        ctx.load_default_certs()
    return ctx
