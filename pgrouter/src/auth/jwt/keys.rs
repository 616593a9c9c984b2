//! Verification keys: loading a PEM public key and converting JWKs.
//!
//! Each key carries its [`KeyKind`] so the verifier can refuse a header `alg`
//! that does not fit the key (e.g. ES384 against a P-256 key, or any HMAC
//! algorithm against an asymmetric key — the classic key-confusion attack).
//! jsonwebtoken's own PEM loader does not tell P-256 from P-384, so the
//! SubjectPublicKeyInfo is classified here with a minimal DER reader.

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};

/// The type of a public key, which fixes the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// Whether a token signed with `alg` can be verified by this kind of key.
    pub fn supports(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (self, alg),
            (KeyKind::Rsa, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
                | (KeyKind::EcP256, ES256)
                | (KeyKind::EcP384, ES384)
                | (KeyKind::Ed25519, EdDSA)
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::EcP256 => "EC P-256",
            KeyKind::EcP384 => "EC P-384",
            KeyKind::Ed25519 => "Ed25519",
        }
    }
}

/// A key ready for verification.
pub struct VerifyKey {
    pub key: DecodingKey,
    pub kind: KeyKind,
    /// The JWK's `alg`, when it pins one: the token's `alg` must then equal it.
    pub alg: Option<Algorithm>,
    /// The JWK's `kid` (None for a PEM key or a JWK without one).
    pub kid: Option<String>,
}

impl VerifyKey {
    /// Whether a token header `alg` may be verified with this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.kind.supports(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

// DER encodings of the object identifiers we recognise.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

const TAG_SEQUENCE: u8 = 0x30;
const TAG_OID: u8 = 0x06;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_VERSION: u8 = 0xa0; // [0] EXPLICIT in a TBSCertificate

/// Parses the PEM text of a public key file: `PUBLIC KEY` (SPKI, any of the
/// supported types), `RSA PUBLIC KEY` (PKCS#1) or `CERTIFICATE` (its SPKI).
/// Private keys are refused: the router only ever needs the public half.
pub fn from_pem(text: &[u8]) -> Result<VerifyKey, String> {
    let blocks = pem::parse_many(text).map_err(|e| format!("not a PEM file: {e}"))?;
    let mut keys = blocks.iter().filter(|b| !b.tag().ends_with("PARAMETERS"));
    let block = keys.next().ok_or("no PEM block found")?;
    if keys.next().is_some() {
        return Err("more than one PEM block; give exactly one public key".into());
    }
    let der = block.contents();
    let (kind, material) = match block.tag() {
        "PUBLIC KEY" => classify_spki(der)?,
        "RSA PUBLIC KEY" => (KeyKind::Rsa, der),
        "CERTIFICATE" => classify_spki(certificate_spki(der)?)?,
        tag if tag.contains("PRIVATE KEY") => {
            return Err(format!(
                "found a {tag}; give the public key (e.g. `openssl pkey -pubout`)"
            ))
        }
        tag => {
            return Err(format!(
                "unsupported PEM block \"{tag}\"; expected PUBLIC KEY"
            ))
        }
    };
    let key = match kind {
        KeyKind::Rsa => DecodingKey::from_rsa_der(material),
        KeyKind::EcP256 | KeyKind::EcP384 => DecodingKey::from_ec_der(material),
        KeyKind::Ed25519 => DecodingKey::from_ed_der(material),
    };
    Ok(VerifyKey {
        key,
        kind,
        alg: None,
        kid: None,
    })
}

/// Reads SubjectPublicKeyInfo `SEQUENCE { SEQUENCE { algorithm OID,
/// parameters }, BIT STRING }`; returns the key kind and the key bytes in
/// the form jsonwebtoken expects (PKCS#1 for RSA, the point for EC, the raw
/// 32 bytes for Ed25519 — all of which are the BIT STRING's contents).
pub(super) fn classify_spki(der: &[u8]) -> Result<(KeyKind, &[u8]), String> {
    let bad = || "malformed SubjectPublicKeyInfo".to_string();
    let (spki, _) = expect(der, TAG_SEQUENCE).ok_or_else(bad)?;
    let (alg_id, rest) = expect(spki, TAG_SEQUENCE).ok_or_else(bad)?;
    let (bits, _) = expect(rest, TAG_BIT_STRING).ok_or_else(bad)?;
    // First content byte of a BIT STRING: number of unused bits, 0 for keys.
    let material = match bits.split_first() {
        Some((0, m)) if !m.is_empty() => m,
        _ => return Err(bad()),
    };
    let (oid, params) = expect(alg_id, TAG_OID).ok_or_else(bad)?;
    let kind = if oid == OID_RSA {
        KeyKind::Rsa
    } else if oid == OID_ED25519 {
        KeyKind::Ed25519
    } else if oid == OID_EC_PUBLIC_KEY {
        match expect(params, TAG_OID) {
            Some((c, _)) if c == OID_P256 => KeyKind::EcP256,
            Some((c, _)) if c == OID_P384 => KeyKind::EcP384,
            _ => return Err("unsupported EC curve; use P-256 (ES256) or P-384 (ES384)".into()),
        }
    } else {
        return Err("unsupported key type; use RSA, EC P-256/P-384 or Ed25519".into());
    };
    Ok((kind, material))
}

/// The SubjectPublicKeyInfo (whole TLV) of an X.509 certificate.
fn certificate_spki(der: &[u8]) -> Result<&[u8], String> {
    let bad = || "malformed certificate".to_string();
    let (cert, _) = expect(der, TAG_SEQUENCE).ok_or_else(bad)?;
    let (tbs, _) = expect(cert, TAG_SEQUENCE).ok_or_else(bad)?;
    let mut rest = tbs;
    if rest.first() == Some(&TAG_VERSION) {
        rest = read_tlv(rest).ok_or_else(bad)?.2;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        rest = read_tlv(rest).ok_or_else(bad)?.2;
    }
    let (tag, _, after) = read_tlv(rest).ok_or_else(bad)?;
    if tag != TAG_SEQUENCE {
        return Err(bad());
    }
    Ok(&rest[..rest.len() - after.len()])
}

/// Reads one DER TLV: (tag, contents, rest). Only single-byte tags and
/// definite lengths up to 4 bytes, which covers every key we accept.
pub(super) fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let len = input[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        input = &input[n..];
        len
    };
    if input.len() < len {
        return None;
    }
    Some((tag, &input[..len], &input[len..]))
}

/// Reads one TLV that must have tag `tag`: (contents, rest).
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match read_tlv(input)? {
        (t, contents, rest) if t == tag => Some((contents, rest)),
        _ => None,
    }
}

/// Converts one JWK from a JWKS, or says why it is skipped. Keys meant for
/// encryption, HMAC (`oct`) keys and curves jsonwebtoken cannot verify are
/// skipped rather than failing the whole set, because real identity
/// providers publish such keys next to their signing keys.
pub fn from_jwk(jwk: &Jwk) -> Result<VerifyKey, String> {
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("not a signature key (use)".into());
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.contains(&KeyOperations::Verify) {
            return Err("not a verification key (key_ops)".into());
        }
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return Err("unsupported EC curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported OKP curve".into()),
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (oct) key".into()),
        _ => return Err("unsupported key type".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => match signature_alg(ka) {
            Some(alg) if kind.supports(alg) => Some(alg),
            Some(alg) => return Err(format!("alg {alg:?} does not fit a {} key", kind.name())),
            None => return Err(format!("alg {ka} is not an asymmetric signature algorithm")),
        },
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key material: {e}"))?;
    Ok(VerifyKey {
        key,
        kind,
        alg,
        kid: jwk.common.key_id.clone(),
    })
}

/// A JWK `alg` as a signature algorithm we can verify (never HMAC).
fn signature_alg(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
