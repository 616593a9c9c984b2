//! The `tls-server-end-point` channel binding data (RFC 5929 section 4.1)
//! of the router's own certificate, which SCRAM-SHA-256-PLUS binds a
//! client's login to: a hash of the leaf certificate's DER bytes.
//!
//! The hash is the one the certificate's signature uses, except that MD5
//! and SHA-1 become SHA-256; for RSASSA-PSS it is the hash named in the
//! signature's parameters (SHA-1 when absent). This is what PostgreSQL's
//! `be_tls_get_certificate_hash` and libpq's `pgtls_get_peer_certificate_hash`
//! compute, so libpq's binding data matches ours. A signature without a
//! single hash (Ed25519, Ed448) has no end-point data: RFC 5929 leaves it
//! undefined, and the router then does not offer SCRAM-SHA-256-PLUS.
//!
//! Only the three DER elements on the way to the signature algorithm are
//! read (`Certificate`, its `signatureAlgorithm`, the PSS parameters): the
//! certificate was already accepted by rustls, and anything unexpected here
//! just means "no binding".

use std::sync::Arc;

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// A certificate's end-point data, shared by every connection made with it.
pub type EndPoint = Arc<[u8]>;

/// The hash functions a certificate's signature can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

/// The end-point data for the leaf certificate `der`, or `None` when its
/// signature algorithm names no usable hash.
pub fn certificate_hash(der: &[u8]) -> Option<Vec<u8>> {
    Some(match signature_hash(der)? {
        Hash::Sha224 => Sha224::digest(der).to_vec(),
        Hash::Sha256 => Sha256::digest(der).to_vec(),
        Hash::Sha384 => Sha384::digest(der).to_vec(),
        Hash::Sha512 => Sha512::digest(der).to_vec(),
    })
}

/// OID contents (without tag and length) of the signature algorithms whose
/// hash is fixed by the OID, with the hash RFC 5929 says to use.
const SIGNATURES: &[(&[u8], Hash)] = &[
    // 1.2.840.113549.1.1.{4,5,14,11,12,13}: md5/sha1/sha224/256/384/512WithRSAEncryption
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 4], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 5], Hash::Sha256),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 14],
        Hash::Sha224,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 11],
        Hash::Sha256,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 12],
        Hash::Sha384,
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 13],
        Hash::Sha512,
    ),
    // 1.2.840.10045.4.1 ecdsa-with-SHA1, 1.2.840.10045.4.3.{1,2,3,4} ecdsa-with-SHA224..512
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 1], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 1], Hash::Sha224),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 2], Hash::Sha256),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 3], Hash::Sha384),
    (&[0x2a, 0x86, 0x48, 0xce, 0x3d, 4, 3, 4], Hash::Sha512),
];

/// 1.2.840.113549.1.1.10 RSASSA-PSS: the hash is in the parameters.
const RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 1, 1, 10];

/// Hash algorithm OIDs as PSS parameters name them.
const HASHES: &[(&[u8], Hash)] = &[
    // 1.3.14.3.2.26 sha1 (so SHA-256, as for the other SHA-1 signatures)
    (&[0x2b, 0x0e, 3, 2, 26], Hash::Sha256),
    // 2.16.840.1.101.3.4.2.{4,1,2,3} sha224, sha256, sha384, sha512
    (&[0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 4], Hash::Sha224),
    (&[0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 1], Hash::Sha256),
    (&[0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 2], Hash::Sha384),
    (&[0x60, 0x86, 0x48, 1, 0x65, 3, 4, 2, 3], Hash::Sha512),
];

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
/// `[0] EXPLICIT`: RSASSA-PSS-params' hashAlgorithm.
const CONTEXT_0: u8 = 0xa0;

/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }`,
/// `AlgorithmIdentifier ::= SEQUENCE { algorithm OID, parameters ANY OPTIONAL }`.
fn signature_hash(der: &[u8]) -> Option<Hash> {
    let (certificate, _) = element(der, SEQUENCE)?;
    let (_tbs, rest) = any_element(certificate)?;
    let (algorithm, _) = element(rest, SEQUENCE)?;
    let (oid, parameters) = element(algorithm, OID)?;
    if let Some(&(_, hash)) = SIGNATURES.iter().find(|(o, _)| *o == oid) {
        return Some(hash);
    }
    if oid != RSASSA_PSS {
        return None; // Ed25519, Ed448, or nothing rustls would serve
    }
    // RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] AlgorithmIdentifier DEFAULT sha1, ... }
    let (params, _) = element(parameters, SEQUENCE)?;
    if params.first() != Some(&CONTEXT_0) {
        return Some(Hash::Sha256); // the default, SHA-1
    }
    let (explicit, _) = element(params, CONTEXT_0)?;
    let (hash_algorithm, _) = element(explicit, SEQUENCE)?;
    let (hash_oid, _) = element(hash_algorithm, OID)?;
    HASHES
        .iter()
        .find(|(o, _)| *o == hash_oid)
        .map(|&(_, hash)| hash)
}

/// The contents of the DER element at the start of `input` if its tag is
/// `tag`, and what follows it.
fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    if *input.first()? != tag {
        return None;
    }
    any_element(input)
}

/// The contents of the DER element at the start of `input` (single-byte
/// tags only, as every element read here has), and what follows it.
fn any_element(input: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.get(1..)?.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // Long form: the low bits count the length bytes (at most 4 here).
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(count)?;
        let len = bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (len, rest)
    };
    rest.split_at_checked(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn der(name: &str) -> Vec<u8> {
        let path = format!("{}/src/net/testdata/{name}", env!("CARGO_MANIFEST_DIR"));
        CertificateDer::from_pem_file(&path).unwrap().to_vec()
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Expected values from `openssl x509 -noout -fingerprint -<hash>` of
    /// each file, with the hash RFC 5929 picks for its signature algorithm.
    #[test]
    fn the_hash_follows_the_signature_algorithm() {
        let cases = [
            // ecdsa-with-SHA256 (the unit tests' TLS server certificate)
            (
                "server.pem",
                "0687f799a4d9c2d691f26d2558ec34e8a584c7322323f3bd8f7df719a770b1b5",
            ),
            // md5WithRSAEncryption and sha1WithRSAEncryption: SHA-256
            (
                "end_point/rsa_md5.pem",
                "44ac627e9dde1b3a343e19aea777ee379075454a95b900f6baf3fa83ec405232",
            ),
            (
                "end_point/rsa_sha1.pem",
                "65a5968c3c0f386b74a4ceeeb29c55a5b6fda23b86ba5f3f168002578d35b9c3",
            ),
            // RSASSA-PSS with the default hash (SHA-1): SHA-256
            (
                "end_point/rsa_pss_default.pem",
                "fae623b940a4ad5963ac0d1f5b77454a5f9252cb857b89c2a4464aaf6a1cffec",
            ),
            (
                "end_point/rsa_sha384.pem",
                "d432720e290fa855d32ffe0e97650eab2c75d1e6d7ff35ff998e2cf13e977857\
                 7afd9276d589c4d78f5186d2744f9f01",
            ),
            (
                "end_point/ecdsa_sha512.pem",
                "638fe8156c3c1b62f6a1cda98da43f16cb83c44ae7d98c8a0e897d7143ef1352\
                 9de072fe68dd185c3f6bbd23dc7ac3129f957aec082d20920d59c40df7190551",
            ),
            (
                "end_point/rsa_pss_sha512.pem",
                "29d9b7e5540d7c61233df995fcdc60c234e4b1861b5105720ac3ae9b38a906d7\
                 977da62df310ffa67e1a785f9d20e0c4e4bd4f73a25c31a6ab2684cc370a77f9",
            ),
        ];
        for (file, expected) in cases {
            let hash = certificate_hash(&der(file)).unwrap_or_default();
            assert_eq!(hex(&hash), expected, "{file}");
        }
    }

    #[test]
    fn a_signature_without_a_hash_has_no_end_point() {
        assert_eq!(certificate_hash(&der("end_point/ed25519.pem")), None);
    }

    #[test]
    fn truncated_or_altered_certificates_give_no_hash_and_no_panic() {
        let good = der("server.pem");
        assert!(certificate_hash(&good).is_some());
        for len in 0..good.len() {
            // The outer SEQUENCE's length runs past any cut.
            assert_eq!(certificate_hash(&good[..len]), None, "{len}");
        }
        assert_eq!(
            certificate_hash(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        assert_eq!(certificate_hash(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(certificate_hash(&[0x30, 0x80]), None);
        assert_eq!(certificate_hash(b"not a certificate"), None);
        let mut altered = good.clone();
        // The first byte of the outer SEQUENCE's tag.
        altered[0] = 0x31;
        assert_eq!(certificate_hash(&altered), None);
    }
}
