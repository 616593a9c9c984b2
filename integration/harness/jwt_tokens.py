"""Key pairs and JWTs for the JWT-login tests (PyJWT + cryptography).

`SigningKey` holds one private key (RSA 2048, EC P-256 or Ed25519), writes
its public half as PEM and as a JWK, and signs tokens. The module-level
helpers build the hostile tokens the attack tests need: `alg: none`, HS256
"signed" with the RSA public key bytes (key confusion), a payload changed
after signing.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://issuer.test"
AUDIENCE = "pgrouter-test"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(obj) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SigningKey:
    """One asymmetric key pair. kind: "rsa" | "ec" | "ed25519"."""

    def __init__(self, kind: str = "rsa", kid: str | None = None):
        self.kind = kind
        self.kid = kid or f"{kind}-{uuid.uuid4().hex[:8]}"
        if kind == "rsa":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.alg = "RS256"
        elif kind == "ec":
            self.private = ec.generate_private_key(ec.SECP256R1())
            self.alg = "ES256"
        elif kind == "ed25519":
            self.private = ed25519.Ed25519PrivateKey.generate()
            self.alg = "EdDSA"
        else:
            raise ValueError(kind)
        self.public = self.private.public_key()

    # ------------------------------------------------------------ public --
    def public_pem(self) -> bytes:
        return self.public.public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)

    def write_public_pem(self, path: Path) -> Path:
        path.write_bytes(self.public_pem())
        return path

    def jwk(self, with_alg: bool = True) -> dict:
        algo = {"rsa": RSAAlgorithm, "ec": ECAlgorithm, "ed25519": OKPAlgorithm}[self.kind]
        raw = algo.to_jwk(self.public)
        d = json.loads(raw) if isinstance(raw, str) else dict(raw)
        d["kid"] = self.kid
        d["use"] = "sig"
        if with_alg:
            d["alg"] = self.alg
        return d

    # -------------------------------------------------------------- sign --
    def sign(self, claims: dict, alg: str | None = None, kid: str | None | bool = True,
             headers: dict | None = None) -> str:
        """Sign `claims`. kid=True puts this key's kid in the header, a string
        puts that kid, False/None leaves it out."""
        hdr = dict(headers or {})
        if kid is True:
            hdr["kid"] = self.kid
        elif kid:
            hdr["kid"] = kid
        return jwt.encode(claims, self.private, algorithm=alg or self.alg, headers=hdr or None)


def claims(sub: str, role: str | None = None, ttl: int = 300, **extra) -> dict:
    """Standard claims: sub, role (omitted when None), iat, exp = now + ttl,
    iss and aud of the test issuer. Extra keyword arguments override or add
    claims (pass a value of None to drop one)."""
    now = int(time.time())
    c = {"sub": sub, "iat": now, "exp": now + ttl, "iss": ISSUER, "aud": AUDIENCE}
    if role is not None:
        c["role"] = role
    for k, v in extra.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def alg_none_token(payload: dict) -> str:
    """An unsigned token: header {"alg": "none"}, empty signature."""
    return f"{b64url_json({'alg': 'none', 'typ': 'JWT'})}.{b64url_json(payload)}."


def hs256_token(payload: dict, secret: bytes, kid: str | None = None) -> str:
    """HS256 over `secret` — for the key-confusion attack, `secret` is the
    RSA public key's PEM bytes (PyJWT refuses to do that itself)."""
    header = {"alg": "HS256", "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing_input = f"{b64url_json(header)}.{b64url_json(payload)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def tamper_payload(token: str, **changes) -> str:
    """The same header and signature with a modified payload."""
    header, payload, sig = token.split(".")
    body = json.loads(b64url_decode(payload))
    body.update(changes)
    return f"{header}.{b64url_json(body)}.{sig}"


def flip_signature(token: str) -> str:
    """The same header and payload with one signature byte changed."""
    header, payload, sig = token.split(".")
    raw = bytearray(b64url_decode(sig))
    raw[len(raw) // 2] ^= 0x01
    return f"{header}.{payload}.{b64url(bytes(raw))}"
