"""Certificates and keys for the local control plane, generated with ``cryptography``.

A cluster CA signs the API server's serving certificate and the admin client
certificate (``O=system:masters``); a separate key pair signs service-account tokens.
As kubeadm does, etcd has a CA of its own: it signs etcd's serving and peer certificate
and the one client certificate etcd accepts, the API server's (``apiserver-etcd-client``).
No certificate of the cluster CA (admin, node, kubelet client) opens etcd.
Everything is written as PEM files into one directory (keys mode 0600).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class ClusterPKI:
    """Paths of the PEM files making up the cluster's credentials."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_public_key: Path
    sa_private_key: Path
    node_cert: Path
    node_key: Path
    kubelet_client_cert: Path
    kubelet_client_key: Path
    etcd_ca_cert: Path
    etcd_ca_key: Path
    etcd_server_cert: Path
    etcd_server_key: Path
    etcd_client_cert: Path
    etcd_client_key: Path


def _write(path: Path, data: bytes, *, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    usage: x509.ObjectIdentifier | list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(usage if isinstance(usage, list) else [usage]), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _ca(name: x509.Name) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA key and certificate."""
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def generate(
    directory: Path,
    *,
    service_ip: str,
    node_name: str = "local-node",
    extra_ips: tuple[str, ...] = (),
) -> ClusterPKI:
    """Generate the CA, the API server's serving certificate, client certificates (admin,
    the node ``system:node:<node_name>``, the API server's kubelet client) and the
    service-account key pair.

    ``service_ip`` (the ``kubernetes`` Service's cluster IP) and ``extra_ips`` (e.g. the
    node IP the API server listens on) are added to the serving certificate's SANs.
    Raises OSError when ``directory`` is not writable.
    """
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    ca_name = _name("kernelsession-local-ca")
    ca_key, ca_cert = _ca(ca_name)
    serving_key = ec.generate_private_key(ec.SECP256R1())
    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address(service_ip)),
        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
    ]
    serving = _issue(
        _name("kube-apiserver"),
        serving_key,
        ca_name,
        ca_key,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
    )
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _issue(
        _name("kernelsession-admin", "system:masters"),
        admin_key,
        ca_name,
        ca_key,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
    )
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    node_key = ec.generate_private_key(ec.SECP256R1())
    node = _issue(
        _name(f"system:node:{node_name}", "system:nodes"), node_key, ca_name, ca_key, usage=client
    )
    kubelet_client_key = ec.generate_private_key(ec.SECP256R1())
    kubelet_client = _issue(
        _name("kube-apiserver-kubelet-client", "system:masters"),
        kubelet_client_key,
        ca_name,
        ca_key,
        usage=client,
    )
    etcd_ca_name = _name("kernelsession-etcd-ca")
    etcd_ca_key, etcd_ca = _ca(etcd_ca_name)
    etcd_server_key = ec.generate_private_key(ec.SECP256R1())
    etcd_server = _issue(  # serving and peer: etcd's peer port checks client certificates
        _name("kernelsession-etcd"),
        etcd_server_key,
        etcd_ca_name,
        etcd_ca_key,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH, client],
        sans=[
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ],
    )
    etcd_client_key = ec.generate_private_key(ec.SECP256R1())
    etcd_client = _issue(
        _name("kube-apiserver-etcd-client"),
        etcd_client_key,
        etcd_ca_name,
        etcd_ca_key,
        usage=client,
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.Encoding.PEM
    return ClusterPKI(
        ca_cert=_write(directory / "ca.crt", ca_cert.public_bytes(pem)),
        ca_key=_write(directory / "ca.key", _key_pem(ca_key), private=True),
        serving_cert=_write(directory / "apiserver.crt", serving.public_bytes(pem)),
        serving_key=_write(directory / "apiserver.key", _key_pem(serving_key), private=True),
        admin_cert=_write(directory / "admin.crt", admin.public_bytes(pem)),
        admin_key=_write(directory / "admin.key", _key_pem(admin_key), private=True),
        sa_public_key=_write(
            directory / "sa.pub",
            sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
        ),
        sa_private_key=_write(directory / "sa.key", _key_pem(sa_key), private=True),
        node_cert=_write(directory / "node.crt", node.public_bytes(pem)),
        node_key=_write(directory / "node.key", _key_pem(node_key), private=True),
        kubelet_client_cert=_write(
            directory / "kubelet-client.crt", kubelet_client.public_bytes(pem)
        ),
        kubelet_client_key=_write(
            directory / "kubelet-client.key", _key_pem(kubelet_client_key), private=True
        ),
        etcd_ca_cert=_write(directory / "etcd-ca.crt", etcd_ca.public_bytes(pem)),
        etcd_ca_key=_write(directory / "etcd-ca.key", _key_pem(etcd_ca_key), private=True),
        etcd_server_cert=_write(directory / "etcd-server.crt", etcd_server.public_bytes(pem)),
        etcd_server_key=_write(
            directory / "etcd-server.key", _key_pem(etcd_server_key), private=True
        ),
        etcd_client_cert=_write(
            directory / "apiserver-etcd-client.crt", etcd_client.public_bytes(pem)
        ),
        etcd_client_key=_write(
            directory / "apiserver-etcd-client.key", _key_pem(etcd_client_key), private=True
        ),
    )
