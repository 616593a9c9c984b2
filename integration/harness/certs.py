"""Throw-away X.509 certificates for the TLS tests, made with `cryptography`.

    ca = CertAuthority.create(tmpdir / "ca", "pgrouter test CA")
    leaf = ca.issue(tmpdir / "router", "router A", dns=["localhost"], ips=["127.0.0.1"])
    leaf.cert_path, leaf.key_path, ca.cert_path      # PEM files

Keys are RSA 2048 (understood by rustls, OpenSSL/libpq and PostgreSQL alike),
written unencrypted as PKCS#8 with mode 0600. Every certificate gets a random
serial number, so two certificates with the same names still differ.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write-then-rename: a reader never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pgrouter tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass
class Leaf:
    """An end-entity certificate and its key, as objects and as PEM files."""

    cn: str
    serial: int
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    cert_path: Path
    key_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def write(self, cert_path: Path | None = None, key_path: Path | None = None) -> None:
        """(Re)write the PEM files, by default at their own paths."""
        _write(Path(cert_path or self.cert_path), self.cert_pem, 0o644)
        _write(Path(key_path or self.key_path), self.key_pem, 0o600)


@dataclass
class CertAuthority:
    cn: str
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    cert_path: Path

    @classmethod
    def create(cls, directory: Path, cn: str = "pgrouter test CA") -> "CertAuthority":
        directory = Path(directory)
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        path = directory / "ca.crt"
        _write(path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cls(cn, cert, key, path)

    def issue(self, directory: Path, cn: str, dns: list[str] = (), ips: list[str] = (),
              stem: str = "server", write: bool = True) -> Leaf:
        """A server certificate signed by this CA with the given subjectAltNames.
        Files: <directory>/<stem>.crt and <stem>.key (written unless write=False)."""
        directory = Path(directory)
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        serial = x509.random_serial_number()
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=True, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        leaf = Leaf(cn, serial, cert, key, directory / f"{stem}.crt", directory / f"{stem}.key")
        if write:
            leaf.write()
        return leaf


def describe(der: bytes) -> tuple[str, int]:
    """(common name, serial number) of a DER certificate, e.g. from
    `SSLSocket.getpeercert(binary_form=True)`."""
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (cns[0].value if cns else ""), cert.serial_number
