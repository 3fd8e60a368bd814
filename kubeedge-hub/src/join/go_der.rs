//! The DER shapes KubeEdge's Go side reads and writes that rcgen does not: ECDSA keys as SEC1
//! (rcgen, through ring, reads and writes PKCS #8; the conversion needs only a few fixed DER
//! shapes, built and taken apart here) and the string types Go's `encoding/asn1` picks for
//! names.

use rcgen::{DnValue, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A string attribute as Go's `encoding/asn1` writes an untagged string: PrintableString if
/// every byte is in its alphabet (without `*` and `&`), else UTF8String.
pub(super) fn go_string(s: &str) -> DnValue {
    let printable = s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(b, b' ' | b'\'' | b'(' | b')' | b'+'..=b'/')
            || matches!(b, b':' | b'=' | b'?')
    });
    if printable && let Ok(p) = rcgen::string::PrintableString::try_from(s) {
        return DnValue::PrintableString(p);
    }
    DnValue::Utf8String(s.to_owned())
}

/// Content octets of the ecPublicKey OID (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// Content octets of the prime256v1 OID (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// Content octets of the secp384r1 OID (1.3.132.0.34).
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_CONTEXT_0: u8 = 0xa0;
const TAG_CONTEXT_1: u8 = 0xa1;

/// The private scalar's length in bytes for a curve OID.
fn scalar_len(curve: &[u8]) -> Option<usize> {
    match curve {
        OID_P256 => Some(32),
        OID_P384 => Some(48),
        _ => None,
    }
}

/// Reads the key, returning rcgen's key pair and the DER to keep as the CA key (SEC1).
pub(super) fn load_key(
    key: &PrivateKeyDer<'_>,
    cert_curve: Option<&[u8]>,
) -> Result<(KeyPair, Vec<u8>), crate::Error> {
    match key {
        PrivateKeyDer::Sec1(sec1) => {
            let sec1 = sec1.secret_sec1_der();
            let curve = sec1_curve(sec1)
                .or(cert_curve)
                .ok_or_else(|| crate::Error::PrivateKey("unknown elliptic curve".to_owned()))?;
            if scalar_len(curve).is_none() {
                return Err(crate::Error::PrivateKey(
                    "only P-256 and P-384 keys are supported".to_owned(),
                ));
            }
            let pkcs8 = pkcs8_from_sec1(curve, sec1);
            let key_pair = key_pair_from_pkcs8(pkcs8)?;
            Ok((key_pair, sec1.to_vec()))
        }
        PrivateKeyDer::Pkcs8(pkcs8) => {
            let key_pair = key_pair_from_pkcs8(pkcs8.secret_pkcs8_der().to_vec())?;
            let sec1 = sec1_from_key_pair(&key_pair)?;
            Ok((key_pair, sec1))
        }
        _ => Err(crate::Error::PrivateKey(
            "only ECDSA keys (SEC1 or PKCS #8) are supported".to_owned(),
        )),
    }
}

fn key_pair_from_pkcs8(pkcs8: Vec<u8>) -> Result<KeyPair, crate::Error> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    let key_pair = KeyPair::try_from(&key).map_err(|e| crate::Error::PrivateKey(e.to_string()))?;
    let alg = key_pair.algorithm();
    if alg != &PKCS_ECDSA_P256_SHA256 && alg != &PKCS_ECDSA_P384_SHA384 {
        return Err(crate::Error::PrivateKey(
            "only P-256 and P-384 ECDSA keys are supported".to_owned(),
        ));
    }
    Ok(key_pair)
}

/// The SEC1 DER of an ECDSA key pair, laid out as Go's `x509.MarshalECPrivateKey`: version 1,
/// the scalar padded to the curve size, the curve OID and the uncompressed public key.
pub(super) fn sec1_from_key_pair(key: &KeyPair) -> Result<Vec<u8>, crate::Error> {
    let bad = || crate::Error::PrivateKey("unexpected PKCS #8 layout".to_owned());
    let (curve, scalar) = pkcs8_ec_parts(key.serialized_der()).ok_or_else(bad)?;
    let len = scalar_len(curve).ok_or_else(bad)?;
    let scalar = strip_leading_zeros(scalar);
    if scalar.len() > len {
        return Err(bad());
    }
    let mut padded = vec![0u8; len - scalar.len()];
    padded.extend_from_slice(scalar);
    let mut public = vec![0u8];
    public.extend_from_slice(key.public_key_raw());

    let mut body = tlv(TAG_INTEGER, &[1]);
    body.extend(tlv(TAG_OCTET_STRING, &padded));
    body.extend(tlv(TAG_CONTEXT_0, &tlv(TAG_OID, curve)));
    body.extend(tlv(TAG_CONTEXT_1, &tlv(TAG_BIT_STRING, &public)));
    Ok(tlv(TAG_SEQUENCE, &body))
}

fn strip_leading_zeros(mut b: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = b {
        b = rest;
    }
    b
}

/// A PKCS #8 `PrivateKeyInfo` around a SEC1 `ECPrivateKey`.
fn pkcs8_from_sec1(curve: &[u8], sec1: &[u8]) -> Vec<u8> {
    let mut alg = tlv(TAG_OID, OID_EC_PUBLIC_KEY);
    alg.extend(tlv(TAG_OID, curve));
    let mut body = tlv(TAG_INTEGER, &[0]);
    body.extend(tlv(TAG_SEQUENCE, &alg));
    body.extend(tlv(TAG_OCTET_STRING, sec1));
    tlv(TAG_SEQUENCE, &body)
}

/// The curve OID and the private scalar of an EC PKCS #8 key.
fn pkcs8_ec_parts(pkcs8: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut outer = DerReader::new(DerReader::new(pkcs8).expect(TAG_SEQUENCE)?);
    outer.expect(TAG_INTEGER)?;
    let mut alg = DerReader::new(outer.expect(TAG_SEQUENCE)?);
    if alg.expect(TAG_OID)? != OID_EC_PUBLIC_KEY {
        return None;
    }
    let curve = alg.expect(TAG_OID)?;
    let sec1 = outer.expect(TAG_OCTET_STRING)?;
    let mut ec = DerReader::new(DerReader::new(sec1).expect(TAG_SEQUENCE)?);
    ec.expect(TAG_INTEGER)?;
    let scalar = ec.expect(TAG_OCTET_STRING)?;
    Some((curve, scalar))
}

/// The curve OID in a SEC1 `ECPrivateKey`'s optional `[0] parameters`.
fn sec1_curve(sec1: &[u8]) -> Option<&[u8]> {
    let mut ec = DerReader::new(DerReader::new(sec1).expect(TAG_SEQUENCE)?);
    ec.expect(TAG_INTEGER)?;
    ec.expect(TAG_OCTET_STRING)?;
    let (tag, params) = ec.next()?;
    if tag != TAG_CONTEXT_0 {
        return None;
    }
    DerReader::new(params).expect(TAG_OID)
}

/// A DER tag-length-value with definite length.
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// A bounds-checked reader of DER tag-length-values (single-byte tags, definite lengths).
struct DerReader<'a> {
    rest: &'a [u8],
}

impl<'a> DerReader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Self { rest }
    }

    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.rest.split_first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let (len_bytes, rest) = rest.split_at(n);
            let len = len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, rest)
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        self.rest = rest;
        Some((tag, content))
    }

    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.next()? {
            (t, content) if t == tag => Some(content),
            _ => None,
        }
    }
}
