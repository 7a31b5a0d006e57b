"""The cluster's TLS credentials: a CA (EC P-256), a certificate per node and one for the tools,
and the gRPC credentials the supervisor's own channels use.

Where cluster.yaml names no `tls:` directory, `ensure_cluster_credentials` makes them under
data_dir/tls/ (never under data_dir/N/, so wiping a node keeps its credentials): `ca.pem` and
`ca.key`, `<id>.pem` and `<id>.key` per node, `tool.pem` and `tool.key`. `issue` makes one
certificate for a node on another machine (`python -m supervisor cert ID --host H`).

A node's certificate names it `<id>.<cluster>.chatbooth` (a DNS SAN: peers dial proxy ports on
127.0.0.1, so they are checked by that name, never by address) and each host it is reached at
(an IP SAN for an address, a DNS SAN for a name). Keys are written with O_CREAT|O_EXCL and mode
0600 in 0700 directories: never a moment when another user could read one.

Imports cryptography, grpc, node.config and supervisor.errors.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.config import TOOL_NAME, ClusterConfig, TlsFiles, certificate_name
from supervisor.errors import SupervisorError

logger = logging.getLogger(__name__)

CA_VALID_DAYS: Final = 3650
CERT_VALID_DAYS: Final = 825
CA_KEY_NAME: Final = "ca"  # ca.key beside ca.pem: only `supervisor up` and `cert` need it


class CertificateError(SupervisorError):
    """The cluster's credentials are missing, unreadable or cannot be written."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """The PEM bytes a gRPC channel or server needs: the CA, and a certificate with its key."""

    ca: bytes
    cert: bytes | None = None
    key: bytes | None = None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    # TRAPS: RSA generation costs tens of ms per key; tests make a CA and certificates per
    # cluster.
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_directory(path: Path) -> None:
    """Create path (and its parents) with mode 0700; an existing one is tightened to 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only (mode 0600 from its creation: no chmod
    race). FileExistsError if it exists: credentials are never overwritten."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _write_public(path: Path, data: bytes) -> None:
    # 0600 too: it is in a 0700 directory anyway, and nothing under data_dir is for others.
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    """An IP SAN for every address among hosts, a DNS SAN for every name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        text = host.strip("[]")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            names.append(x509.DNSName(text))
    return names


def make_ca(cluster: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} chatbooth cluster CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
    return cert, key


def issue_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cluster: str,
    name: str,
    hosts: Sequence[str],
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for member (or tool) `name`, usable as server and as client: SANs
    `<name>.<cluster>.chatbooth` and each of hosts."""
    key = _new_key()
    dns = certificate_name(name, cluster)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=CERT_VALID_DAYS), _ca_expiry(ca_cert)))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns), *host_names(hosts)]), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _ca_expiry(cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_after_utc


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_ca(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and its key (CertificateError if either is missing or not EC)."""
    key_path = files.key(CA_KEY_NAME)
    try:
        cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except OSError as error:
        raise CertificateError(
            f"cannot read the cluster CA ({files.ca}, {key_path}): {error.strerror or error}"
        ) from None
    except ValueError as error:
        raise CertificateError(f"{files.directory}: not a valid CA: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{key_path}: the CA key is not an EC key")
    return cert, key


def write_certificate(
    files: TlsFiles, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    write_private(files.key(name), _key_pem(key))
    _write_public(files.cert(name), _pem(cert))


def ensure_cluster_credentials(config: ClusterConfig) -> datetime.datetime | None:
    """Make what is missing of data_dir/tls (the CA, a certificate per node, the tool's) when
    cluster.yaml names no certificates; the CA's expiry, or None with `tls: plaintext`. With a
    `tls: {dir}` of its own, only checks that every file is there."""
    files = config.tls
    if files is None:
        return None
    names = [*config.node_ids, TOOL_NAME]
    if not config.tls_generated:
        missing = [
            str(path)
            for path in (files.ca, *(p for n in names for p in (files.cert(n), files.key(n))))
            if not path.is_file()
        ]
        if missing:
            raise CertificateError(
                f"{config.path}: tls.dir: missing {', '.join(missing)} (make them with "
                "`python -m supervisor cert ID --host H --config cluster.yaml`)"
            )
        return _ca_expiry(x509.load_pem_x509_certificate(files.ca.read_bytes()))
    try:
        private_directory(files.directory)
        if not files.ca.exists():
            ca_cert, ca_key = make_ca(config.cluster)
            write_private(files.key(CA_KEY_NAME), _key_pem(ca_key))
            _write_public(files.ca, _pem(ca_cert))
            logger.info("made a cluster CA in %s", files.directory)
        else:
            ca_cert, ca_key = load_ca(files)
        for name in names:
            if files.cert(name).exists() and files.key(name).exists():
                continue
            hosts = [config.node(name).host] if name != TOOL_NAME else []
            files.cert(name).unlink(missing_ok=True)
            files.key(name).unlink(missing_ok=True)
            write_certificate(
                files, name, *issue_certificate(ca_cert, ca_key, config.cluster, name, hosts)
            )
    except OSError as error:
        raise CertificateError(
            f"{config.path}: cannot write TLS credentials in {files.directory}: "
            f"{error.strerror or error}"
        ) from None
    return _ca_expiry(ca_cert)


def issue(config: ClusterConfig, node_id: str, hosts: Sequence[str], out: Path) -> Path:
    """`supervisor cert ID --host H`: a certificate for node_id signed by the cluster's CA,
    written to out/ID.pem and out/ID.key (never overwriting); the certificate's path."""
    files = config.tls
    if files is None:
        raise CertificateError(f"{config.path}: tls: plaintext: there is no CA to sign with")
    ca_cert, ca_key = load_ca(files)
    target = TlsFiles(out)
    try:
        private_directory(out)
        if target.cert(node_id).exists() or target.key(node_id).exists():
            raise CertificateError(f"{target.cert(node_id)} or its key exists: not overwritten")
        cert, key = issue_certificate(ca_cert, ca_key, config.cluster, node_id, hosts)
        write_certificate(target, node_id, cert, key)
        if not target.ca.exists():
            _write_public(target.ca, _pem(ca_cert))
    except OSError as error:
        raise CertificateError(f"cannot write to {out}: {error.strerror or error}") from None
    return target.cert(node_id)


def read_credentials(config: ClusterConfig, name: str | None = None) -> Credentials | None:
    """The CA (and with name, that certificate and key) of the cluster; None with `tls:
    plaintext`. CertificateError naming the file that cannot be read."""
    files = config.tls
    if files is None:
        return None
    paths = [files.ca] + ([files.cert(name), files.key(name)] if name is not None else [])
    data: list[bytes] = []
    for path in paths:
        try:
            data.append(path.read_bytes())
        except OSError as error:
            raise CertificateError(f"cannot read {path}: {error.strerror or error}") from None
    if name is None:
        return Credentials(data[0])
    return Credentials(data[0], data[1], data[2])


def channel_credentials(credentials: Credentials) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=credentials.ca,
        private_key=credentials.key,
        certificate_chain=credentials.cert,
    )


def secure_channel(
    address: str,
    credentials: Credentials | None,
    options: Sequence[tuple[str, Any]],
    *,
    target_name: str | None = None,
) -> grpc.Channel:
    """A blocking channel: TLS with credentials (checked against target_name when given),
    plaintext when they are None."""
    if credentials is None:
        return grpc.insecure_channel(address, options=list(options))
    extra = [("grpc.ssl_target_name_override", target_name)] if target_name else []
    return grpc.secure_channel(address, channel_credentials(credentials), [*options, *extra])
