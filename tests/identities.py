"""Real people for the tests: a kubeconfig with a client certificate (CN = user name,
O = groups) signed by the local cluster's CA, so the API server's x509 authenticator,
RBAC and admission see exactly that user, for kubectl and for the Python client alike
(kubernetes_asyncio ignores a kubeconfig's impersonation ``as:``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kernelsession.localcluster.cluster import LocalCluster
from kernelsession.localcluster.cluster.controlplane import write_kubeconfig


def user_kubeconfig(
    cluster: LocalCluster, user: str, groups: tuple[str, ...] = (), *, directory: Path
) -> Path:
    """A kubeconfig authenticating as ``user`` in ``groups`` (a one-day certificate)."""
    ca_cert = x509.load_pem_x509_certificate(cluster.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(
        (cluster.ca_file.parent / "ca.key").read_bytes(), password=None
    )
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, user)]
    attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{user}.crt"
    key_path = directory / f"{user}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return write_kubeconfig(
        directory / f"{user}.kubeconfig",
        server=cluster.server,
        ca_file=cluster.ca_file,
        user=user,
        client_cert=cert_path,
        client_key=key_path,
    )
