//! Node join: the cluster CA, CloudCore's server certificate, edge CSRs and their signing, the
//! authorization of edge client certificates, bootstrap tokens, and hostile inputs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use kubeedge_hub::Error;
use kubeedge_hub::join::{
    CA_VALIDITY_DAYS, CertificateAuthority, DEFAULT_EDGE_CERT_VALIDITY_DAYS, EdgeCsr, ExtKeyUsage,
    MAX_CSR_LEN, Token, ca_hash, node_common_name,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

const DAY: u64 = 24 * 60 * 60;

/// A fixed "now" (2023-11-14T22:13:20Z) for deterministic validity checks.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    let (rest, cert) = X509Certificate::from_der(der).expect("certificate parses");
    assert!(rest.is_empty());
    cert
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An openssl-made CA (`openssl ecparam -name prime256v1 -genkey -noout`, `openssl req -x509`):
/// a SEC1 key laid out as Go's `x509.MarshalECPrivateKey`, a UTF8String `CN=KubeEdge`.
const OPENSSL_CA_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIDdAT0G1K4zwpe/8BPaAeMB8yt5hZDpX2e1CJfr4fQEpoAoGCCqGSM49
AwEHoUQDQgAEPLX5Cg68CDSJ4WodIS9HxPmg7xoH7t3QPudIMOsYjrxSpKtlHyna
GO9uAVe06oRIxPjHgVS1h25Ocyx4uONruA==
-----END EC PRIVATE KEY-----
";
/// The same key as PKCS #8 (`openssl pkcs8 -topk8 -nocrypt`).
const OPENSSL_CA_KEY_PKCS8: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgN0BPQbUrjPCl7/wE
9oB4wHzK3mFkOlfZ7UIl+vh9ASmhRANCAAQ8tfkKDrwINInhah0hL0fE+aDvGgfu
3dA+50gw6xiOvFKkq2UfKdoY724BV7TqhEjE+MeBVLWHbk5zLHi442u4
-----END PRIVATE KEY-----
";
const OPENSSL_CA_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUKgAwIBAgICBAAwCgYIKoZIzj0EAwIwEzERMA8GA1UEAwwIS3ViZUVk
Z2UwIBcNMjYxMTIzMDY0NTAzWhgPMjEyNjA3MjIwNjQ1MDNaMBMxETAPBgNVBAMM
CEt1YmVFZGdlMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEPLX5Cg68CDSJ4Wod
IS9HxPmg7xoH7t3QPudIMOsYjrxSpKtlHynaGO9uAVe06oRIxPjHgVS1h25Ocyx4
uONruKOBgzCBgDAdBgNVHQ4EFgQUgph6REu0ePQwiNFatUpibddYSLMwHwYDVR0j
BBgwFoAUgph6REu0ePQwiNFatUpibddYSLMwDwYDVR0TAQH/BAUwAwEB/zAOBgNV
HQ8BAf8EBAMCAqQwHQYDVR0lBBYwFAYIKwYBBQUHAwEGCCsGAQUFBwMCMAoGCCqG
SM49BAMCA0gAMEUCIQCKGH6foX9K6aGIhQ0GKTk9bw5TkN5Vsw0+aY/eE/6RsAIg
Toz3XKjeltGCiY/l7Fw2ybQpqMJCxFjDEcuHWEkCE0M=
-----END CERTIFICATE-----
";
/// An openssl-made P-384 CA.
const OPENSSL_P384_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MIGkAgEBBDBxeoLOBSMGz48EoAGuXvNcIeUngoSNFM4B/uA9jbIJc5/q0Vw3Qjk7
0O0CyUOW/8mgBwYFK4EEACKhZANiAAS+dXaQ90vwIs5wiDukqhBtSkn0QD7VREkT
zfAZgcuHNR0btC1s5qXl82if6/nQfm0845d5WIx+WA6ZFnhGzKX3ta0temetDH2q
hpNp/G/x5yaNOSgwrlPG6b2V9VFjsWw=
-----END EC PRIVATE KEY-----
";
const OPENSSL_P384_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBpzCCAS6gAwIBAgICBAAwCgYIKoZIzj0EAwIwEzERMA8GA1UEAwwIS3ViZUVk
Z2UwIBcNMjYxMTIzMDY0NTA4WhgPMjEyNjA3MjIwNjQ1MDhaMBMxETAPBgNVBAMM
CEt1YmVFZGdlMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEvnV2kPdL8CLOcIg7pKoQ
bUpJ9EA+1URJE83wGYHLhzUdG7QtbOal5fNon+v50H5tPOOXeViMflgOmRZ4Rsyl
97WtLXpnrQx9qoaTafxv8ecmjTkoMK5Txum9lfVRY7Fso1MwUTAdBgNVHQ4EFgQU
QtnbeBrkWBANHoBbWapxeG4giBcwHwYDVR0jBBgwFoAUQtnbeBrkWBANHoBbWapx
eG4giBcwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNnADBkAjBBELgokAID
xp9+0/A/jS/9yz83zBvfI1rIUCHKiN7+QmdPoGCpHmh2L3n5ivMGp60CMGDuzkNe
C7KuecCGCQHFmW02cqLqEXLfsgyePvR0qzWh/BzLXF+A4QpTQBaMuZ8RQg==
-----END CERTIFICATE-----
";

/// A CSR for `dn` with `sans`, signed by a fresh P-256 key.
fn custom_csr(dn: DistinguishedName, sans: Vec<SanType>) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn name(o: Option<&str>, cn: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = o {
        dn.push(DnType::OrganizationName, o);
    }
    if let Some(cn) = cn {
        dn.push(DnType::CommonName, cn);
    }
    dn
}

/// An edge certificate for `node` issued by `ca`, valid from `now` for `days`.
fn edge_cert(ca: &CertificateAuthority, node: &str, now: SystemTime, days: u32) -> Vec<u8> {
    let csr = EdgeCsr::new(node).unwrap();
    ca.sign_edge_csr_at(&csr.csr_der, ExtKeyUsage::DEFAULT, days, now)
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The CA

#[test]
fn the_ca_can_be_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<CertificateAuthority>();
    send_sync::<Error>();
}

#[test]
fn generated_ca_has_kubeedge_fields() {
    let ca = CertificateAuthority::generate_at(t0()).unwrap();
    let cert = parse(ca.cert_der());
    assert_eq!(cert.subject().to_string(), "CN=KubeEdge");
    assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
    assert_eq!(cert.raw_serial(), &[0x04, 0x00], "serial 1024");
    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basic constraints");
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, None);

    let spki = cert.public_key();
    assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .unwrap()
        .as_oid()
        .unwrap();
    assert_eq!(curve, OID_EC_P256);

    let ku = cert.key_usage().unwrap().expect("key usage").value;
    assert!(ku.digital_signature() && ku.key_encipherment() && ku.key_cert_sign());
    assert!(!ku.crl_sign() && !ku.non_repudiation() && !ku.data_encipherment());
    let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
    assert!(eku.server_auth && eku.client_auth && !eku.any && eku.other.is_empty());

    let validity = cert.validity();
    assert_eq!(validity.not_before.timestamp(), secs(t0()));
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        i64::from(CA_VALIDITY_DAYS) * DAY as i64
    );
    assert_eq!(CA_VALIDITY_DAYS, 36_400);
    cert.verify_signature(None).expect("self-signed");

    // Go's pkix.Name writes "KubeEdge" as a PrintableString (tag 0x13).
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.attr_value().header.tag().0, 0x13);
}

#[test]
fn ca_key_is_go_sec1_and_hash_is_sha256_of_der() {
    let ca = CertificateAuthority::generate().unwrap();
    let key = PrivateKeyDer::try_from(ca.key_der()).unwrap();
    assert!(matches!(key, PrivateKeyDer::Sec1(_)));
    // x509.MarshalECPrivateKey for P-256: 121 bytes, version 1, 32-byte scalar, [0] OID, [1] key.
    let der = ca.key_der();
    assert_eq!(der.len(), 121);
    assert_eq!(&der[..7], &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
    assert_eq!(
        &der[39..51],
        &[
            0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07
        ]
    );
    let ca_cert = parse(ca.cert_der());
    let public = &ca_cert.public_key().subject_public_key.data;
    assert_eq!(&der[51..56], &[0xa1, 0x44, 0x03, 0x42, 0x00]);
    assert_eq!(&der[56..], public.as_ref());

    let expected = hex(&Sha256::digest(ca.cert_der()));
    assert_eq!(ca.ca_hash(), expected);
    assert_eq!(ca_hash(ca.cert_der()), expected);
    assert!(ca.key_pem().starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
    assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
    assert!(ca.cert_pem().lines().all(|l| l.len() <= 64));
    assert!(!format!("{ca:?}").contains(&hex(ca.key_der())));
}

#[test]
fn ca_pem_round_trip() {
    let ca = CertificateAuthority::generate().unwrap();
    let (cert_pem, key_pem) = ca.to_pem();
    let back = CertificateAuthority::from_pem(&cert_pem, &key_pem).unwrap();
    assert_eq!(back.cert_der(), ca.cert_der());
    assert_eq!(back.key_der(), ca.key_der());
    assert_eq!(back.ca_hash(), ca.ca_hash());
    assert_eq!(back.to_pem(), (cert_pem, key_pem));
    let from_der = CertificateAuthority::from_der(ca.cert_der(), ca.key_der()).unwrap();
    assert_eq!(from_der.key_der(), ca.key_der());

    // The reloaded CA signs certificates the original accepts, and tokens verify across them.
    let cert = edge_cert(&back, "edge-1", SystemTime::now(), 365);
    ca.authorize_client_cert(&cert, "edge-1").unwrap();
    let token = Token::issue(&back, Duration::from_secs(3600), t0());
    Token::verify(&token, &ca, t0()).unwrap();
}

#[test]
fn openssl_sec1_ca_loads_and_keeps_its_key_bytes() {
    let ca = CertificateAuthority::from_pem(OPENSSL_CA_CERT, OPENSSL_CA_KEY).unwrap();
    let sec1 = PrivateKeyDer::from_pem_slice(OPENSSL_CA_KEY.as_bytes()).unwrap();
    assert_eq!(
        ca.key_der(),
        sec1.secret_der(),
        "the HMAC key is the SEC1 DER as stored"
    );

    // PKCS #8 of the same key converts to the same SEC1 bytes (Go's layout is openssl's).
    let pkcs8 = CertificateAuthority::from_pem(OPENSSL_CA_CERT, OPENSSL_CA_KEY_PKCS8).unwrap();
    assert_eq!(pkcs8.key_der(), sec1.secret_der());

    // Issued certificates name the CA exactly (its UTF8String subject) and chain to it.
    let now = SystemTime::now();
    let der = edge_cert(&ca, "edge-7", now, 30);
    let cert = parse(&der);
    let ca_cert = parse(ca.cert_der());
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    let aki = cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("authority key identifier");
    let ski = ca_cert
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .unwrap();
    assert_eq!(aki, ski);
    ca.authorize_client_cert(&der, "edge-7").unwrap();
}

#[test]
fn p384_ca_signs() {
    let ca = CertificateAuthority::from_pem(OPENSSL_P384_CERT, OPENSSL_P384_KEY).unwrap();
    let der = edge_cert(&ca, "edge-384", SystemTime::now(), 30);
    ca.authorize_client_cert(&der, "edge-384").unwrap();
    let ca_cert = parse(ca.cert_der());
    parse(&der)
        .verify_signature(Some(ca_cert.public_key()))
        .unwrap();
    let back = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
    assert_eq!(back.key_der(), ca.key_der());
}

#[test]
fn ca_loading_rejects_bad_input() {
    let ca = CertificateAuthority::generate().unwrap();
    let other = CertificateAuthority::generate().unwrap();

    let err = CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem()).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch), "{err}");
    let err = CertificateAuthority::from_der(ca.cert_der(), other.key_der()).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch), "{err}");
    let err = CertificateAuthority::from_pem(OPENSSL_CA_CERT, OPENSSL_P384_KEY).unwrap_err();
    assert!(matches!(err, Error::KeyMismatch), "{err}");

    for (cert, key) in [
        ("", ""),
        ("garbage", "garbage"),
        (OPENSSL_CA_CERT, ""),
        ("", OPENSSL_CA_KEY),
        (OPENSSL_CA_KEY, OPENSSL_CA_CERT),
        (
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            OPENSSL_CA_KEY,
        ),
        (
            "-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n",
            OPENSSL_CA_KEY,
        ),
        (
            OPENSSL_CA_CERT,
            "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n",
        ),
        (
            OPENSSL_CA_CERT,
            "-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n",
        ),
    ] {
        assert!(
            CertificateAuthority::from_pem(cert, key).is_err(),
            "{cert:?} / {key:?}"
        );
    }

    let huge = "A".repeat(4 << 20);
    assert!(matches!(
        CertificateAuthority::from_pem(&huge, OPENSSL_CA_KEY),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        CertificateAuthority::from_der(&vec![0x30; 4 << 20], ca.key_der()),
        Err(Error::TooLarge { .. })
    ));
    assert!(CertificateAuthority::from_der(b"", b"").is_err());
    assert!(CertificateAuthority::from_der(ca.cert_der(), b"\x30\x03\x02\x01\x01").is_err());
}

#[test]
fn ca_loading_survives_every_truncation_and_byte_flip() {
    let ca = CertificateAuthority::generate().unwrap();
    let (cert, key) = (ca.cert_der().to_vec(), ca.key_der().to_vec());
    for len in 0..cert.len() {
        assert!(CertificateAuthority::from_der(&cert[..len], &key).is_err());
    }
    for len in 0..key.len() {
        assert!(CertificateAuthority::from_der(&cert, &key[..len]).is_err());
    }
    for i in 0..key.len() {
        let mut k = key.clone();
        k[i] ^= 0xff;
        let _ = CertificateAuthority::from_der(&cert, &k);
    }
    for i in 0..cert.len() {
        let mut c = cert.clone();
        c[i] ^= 0xff;
        let _ = CertificateAuthority::from_der(&c, &key);
    }
}

// ---------------------------------------------------------------------------------------------
// CloudCore's server certificate

#[test]
fn server_cert_has_kubeedge_subject_sans_and_chains_to_the_ca() {
    let ca = CertificateAuthority::generate().unwrap();
    let ips = [
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let issued = ca
        .issue_server_cert_at(&ips, &["cloudcore.example", "localhost"], t0())
        .unwrap();
    assert_eq!(
        CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .unwrap()
            .as_ref(),
        issued.cert_der.as_slice()
    );
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    assert!(matches!(key, PrivateKeyDer::Sec1(_)));
    assert_eq!(key.secret_der(), issued.key_der.as_slice());
    assert!(!format!("{issued:?}").contains("PRIVATE"));

    let cert = parse(&issued.cert_der);
    let ca_cert = parse(ca.cert_der());
    assert_eq!(cert.subject().to_string(), "O=KubeEdge, CN=KubeEdge");
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert!(cert.basic_constraints().unwrap().is_none());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    let names: Vec<String> = san
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(ip) => format!("IP:{}", hex(ip)),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        [
            "DNS:cloudcore.example".to_owned(),
            "DNS:localhost".to_owned(),
            "IP:0a000001".to_owned(),
            format!("IP:{}", hex(&Ipv6Addr::LOCALHOST.octets())),
        ]
    );
    let validity = cert.validity();
    assert_eq!(validity.not_before.timestamp(), secs(t0()));
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        36_400 * DAY as i64
    );
    assert_ne!(cert.raw_serial(), ca_cert.raw_serial());

    let none: [&str; 0] = [];
    assert!(ca.issue_server_cert(&[], &none).is_ok());
    assert!(matches!(
        ca.issue_server_cert(&[], &["bücher.example"]),
        Err(Error::InvalidName { .. })
    ));
}

fn rustls_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Runs a TLS handshake between `client` and `server` in memory.
fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), rustls::Error> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        if !buf.is_empty() {
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

fn tls_pair(
    ca: &CertificateAuthority,
    server: &kubeedge_hub::join::IssuedCert,
    client_cert: Vec<u8>,
    client_key_pem: &str,
    server_name: &str,
) -> (ClientConnection, ServerConnection) {
    let server_config = ServerConfig::builder_with_provider(rustls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(ca.client_cert_verifier())
        .with_single_cert(
            vec![CertificateDer::from(server.cert_der.clone())],
            PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der().to_vec()))
        .unwrap();
    let client_config = ClientConfig::builder_with_provider(rustls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(client_cert)],
            PrivateKeyDer::from_pem_slice(client_key_pem.as_bytes()).unwrap(),
        )
        .unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    (
        ClientConnection::new(Arc::new(client_config), name).unwrap(),
        ServerConnection::new(Arc::new(server_config)).unwrap(),
    )
}

#[test]
fn mutual_tls_with_issued_certificates() {
    let ca = CertificateAuthority::generate().unwrap();
    let server = ca
        .issue_server_cert(
            &[IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
            &["cloudcore.example"],
        )
        .unwrap();
    let edge = EdgeCsr::new("edge-1").unwrap();
    let edge_cert = ca
        .sign_edge_csr(&edge.csr_der, ExtKeyUsage::DEFAULT, 365)
        .unwrap();

    for host in ["10.0.0.1", "cloudcore.example"] {
        let (mut c, mut s) = tls_pair(&ca, &server, edge_cert.clone(), &edge.key_pem, host);
        handshake(&mut c, &mut s).unwrap();
        let peer = s.peer_certificates().unwrap();
        assert_eq!(peer[0].as_ref(), edge_cert.as_slice());
    }
    let (mut c, mut s) = tls_pair(
        &ca,
        &server,
        edge_cert.clone(),
        &edge.key_pem,
        "other.example",
    );
    assert!(
        handshake(&mut c, &mut s).is_err(),
        "SANs do not name the host"
    );

    // A node certificate from another CA is refused by the server.
    let other = CertificateAuthority::generate().unwrap();
    let foreign = other
        .sign_edge_csr(&edge.csr_der, ExtKeyUsage::DEFAULT, 365)
        .unwrap();
    let (mut c, mut s) = tls_pair(&ca, &server, foreign, &edge.key_pem, "10.0.0.1");
    assert!(handshake(&mut c, &mut s).is_err());
}

// ---------------------------------------------------------------------------------------------
// Edge CSRs and their signing

#[test]
fn edge_csr_is_made_like_edgecore() {
    let csr = EdgeCsr::new("edge-1").unwrap();
    let (rest, req) = X509CertificationRequest::from_der(&csr.csr_der).unwrap();
    assert!(rest.is_empty());
    req.verify_signature().unwrap();
    let info = &req.certification_request_info;
    assert_eq!(
        info.subject.to_string(),
        "C=CN, ST=Zhejiang, L=Hangzhou, O=system:nodes, CN=system:node:edge-1"
    );
    assert!(
        req.requested_extensions().is_none(),
        "no SANs, no extensions"
    );
    let curve = info.subject_pki.algorithm.parameters.as_ref().unwrap();
    assert_eq!(curve.as_oid().unwrap(), OID_EC_P256);

    let key = PrivateKeyDer::from_pem_slice(csr.key_pem.as_bytes()).unwrap();
    assert!(matches!(key, PrivateKeyDer::Sec1(_)));
    assert_eq!(key.secret_der(), csr.key_der.as_slice());
    // The key's public half (the last 65 bytes of the SEC1 DER) is the CSR's.
    assert_eq!(
        &csr.key_der[csr.key_der.len() - 65..],
        info.subject_pki.subject_public_key.data.as_ref()
    );
    assert!(!format!("{csr:?}").contains("PRIVATE"));
}

#[test]
fn edge_csr_is_signed_with_its_subject_client_auth_and_365_days() {
    let ca = CertificateAuthority::generate().unwrap();
    let csr = EdgeCsr::new("edge-1").unwrap();
    let usages = ExtKeyUsage::parse_header("").unwrap();
    let der = ca
        .sign_edge_csr_at(&csr.csr_der, &usages, DEFAULT_EDGE_CERT_VALIDITY_DAYS, t0())
        .unwrap();
    let cert = parse(&der);
    let ca_cert = parse(ca.cert_der());
    // KubeEdge copies CN and O only.
    assert_eq!(
        cert.subject().to_string(),
        "O=system:nodes, CN=system:node:edge-1"
    );
    assert_eq!(cert.issuer().as_raw(), ca_cert.subject().as_raw());
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    let (_, req) = X509CertificationRequest::from_der(&csr.csr_der).unwrap();
    assert_eq!(
        cert.public_key().raw,
        req.certification_request_info.subject_pki.raw
    );

    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment() && !ku.key_cert_sign());
    assert!(cert.basic_constraints().unwrap().is_none());
    assert!(cert.subject_alternative_name().unwrap().is_none());
    let validity = cert.validity();
    assert_eq!(validity.not_before.timestamp(), secs(t0()));
    assert_eq!(
        validity.not_after.timestamp(),
        secs(t0()) + 365 * DAY as i64
    );

    // Random serials: positive, at most 63 bits, different each time.
    let again = ca
        .sign_edge_csr_at(&csr.csr_der, &usages, 365, t0())
        .unwrap();
    let serial = cert.raw_serial();
    assert_ne!(serial, parse(&again).raw_serial());
    assert!(serial.len() <= 8 && serial[0] & 0x80 == 0);
    assert_ne!(serial, ca_cert.raw_serial());
}

#[test]
fn csr_sans_and_requested_usages_are_copied() {
    let ca = CertificateAuthority::generate().unwrap();
    let csr = custom_csr(
        name(Some("system:nodes"), Some("system:node:edge-2")),
        vec![
            SanType::DnsName("edge-2.example".try_into().unwrap()),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2))),
            SanType::URI("https://ignored.example".try_into().unwrap()),
        ],
    );
    let usages = ExtKeyUsage::parse_header("[1, 2]").unwrap();
    assert_eq!(usages, [ExtKeyUsage::ServerAuth, ExtKeyUsage::ClientAuth]);
    let der = ca.sign_edge_csr(&csr, &usages, 10).unwrap();
    let cert = parse(&der);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && eku.server_auth);
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        san.general_names,
        [
            GeneralName::DNSName("edge-2.example"),
            GeneralName::IPAddress(&[192, 168, 1, 2]),
        ]
    );

    // Every Go number maps to an EKU that rcgen can write.
    let all: Vec<ExtKeyUsage> = (0..14).map(|n| ExtKeyUsage::from_go(n).unwrap()).collect();
    let der = ca.sign_edge_csr(&csr, &all, 10).unwrap();
    let cert = parse(&der);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.any && eku.code_signing && eku.ocsp_signing && eku.other.len() == 7);
    assert_eq!(ExtKeyUsage::header_value(&all[1..3]), "[1,2]");
    assert_eq!(ExtKeyUsage::from_go(14), None);
    assert_eq!(ExtKeyUsage::from_go(-1), None);
}

#[test]
fn ext_key_usages_header_is_read_as_kubeedge_reads_it() {
    assert_eq!(
        ExtKeyUsage::parse_header("").unwrap(),
        [ExtKeyUsage::ClientAuth]
    );
    assert_eq!(
        ExtKeyUsage::parse_header("  ").unwrap(),
        [ExtKeyUsage::ClientAuth]
    );
    assert_eq!(
        ExtKeyUsage::parse_header("[2]").unwrap(),
        [ExtKeyUsage::ClientAuth]
    );
    assert_eq!(
        ExtKeyUsage::parse_header("[]").unwrap(),
        Vec::<ExtKeyUsage>::new()
    );
    assert_eq!(
        ExtKeyUsage::parse_header("null").unwrap(),
        Vec::<ExtKeyUsage>::new()
    );
    assert!(matches!(
        ExtKeyUsage::parse_header("[99]"),
        Err(Error::UnknownExtKeyUsage(99))
    ));
    for bad in [
        "2",
        "[\"2\"]",
        "[2.5]",
        "{}",
        "[1,",
        "[18446744073709551616]",
    ] {
        assert!(
            matches!(
                ExtKeyUsage::parse_header(bad),
                Err(Error::ExtKeyUsagesHeader(_))
            ),
            "{bad}"
        );
    }
    assert!(matches!(
        ExtKeyUsage::parse_header(&"[2,".repeat(10_000)),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn signing_rejects_bad_csrs() {
    let ca = CertificateAuthority::generate().unwrap();
    let usages = ExtKeyUsage::DEFAULT;
    let good = EdgeCsr::new("edge-1").unwrap().csr_der;

    assert!(matches!(
        ca.sign_edge_csr(&good, &[], 365),
        Err(Error::NoExtKeyUsages)
    ));

    let no_cn = custom_csr(name(Some("system:nodes"), None), vec![]);
    assert!(matches!(
        ca.sign_edge_csr(&no_cn, usages, 365),
        Err(Error::CsrMissingCommonName)
    ));

    // A flipped bit in the signature, or in the subject, breaks the CSR's signature.
    let mut bad_sig = good.clone();
    *bad_sig.last_mut().unwrap() ^= 0x01;
    assert!(matches!(
        ca.sign_edge_csr(&bad_sig, usages, 365),
        Err(Error::CsrSignature)
    ));
    let mut bad_subject = good.clone();
    let at = bad_subject.windows(4).position(|w| w == b"edge").unwrap();
    bad_subject[at] = b'E';
    assert!(matches!(
        ca.sign_edge_csr(&bad_subject, usages, 365),
        Err(Error::CsrSignature)
    ));

    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(
        ca.sign_edge_csr(&trailing, usages, 365),
        Err(Error::CsrInvalid(_))
    ));
    for garbage in [
        &b""[..],
        b"\x30",
        b"\x30\x82\xff\xff",
        b"not a csr",
        &[0u8; 512],
    ] {
        assert!(matches!(
            ca.sign_edge_csr(garbage, usages, 365),
            Err(Error::CsrInvalid(_))
        ));
    }
    assert!(matches!(
        ca.sign_edge_csr(&vec![0x30; MAX_CSR_LEN + 1], usages, 365),
        Err(Error::TooLarge { .. })
    ));
    // Validity that does not fit a certificate is an error, not a panic.
    assert!(matches!(
        ca.sign_edge_csr(&good, usages, u32::MAX),
        Err(Error::TimeOutOfRange(_))
    ));
    assert!(matches!(
        ca.sign_edge_csr_at(&good, usages, 1, UNIX_EPOCH - Duration::from_secs(1)),
        Err(Error::TimeOutOfRange(_))
    ));
}

#[test]
fn signing_survives_every_truncation_and_byte_flip_of_a_csr() {
    let ca = CertificateAuthority::generate().unwrap();
    let good = EdgeCsr::new("edge-1").unwrap().csr_der;
    for len in 0..good.len() {
        assert!(
            ca.sign_edge_csr(&good[..len], ExtKeyUsage::DEFAULT, 1)
                .is_err()
        );
    }
    for i in 0..good.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut csr = good.clone();
            csr[i] ^= mask;
            // Most flips are refused; none may panic.
            let _ = ca.sign_edge_csr(&csr, ExtKeyUsage::DEFAULT, 1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Authorizing client certificates on /edge.crt

#[test]
fn authorize_accepts_the_node_and_rejects_other_nodes() {
    let ca = CertificateAuthority::generate().unwrap();
    let now = SystemTime::now();
    let cert = edge_cert(&ca, "edge-1", now, 365);
    ca.authorize_client_cert(&cert, "edge-1").unwrap();
    match ca.authorize_client_cert(&cert, "edge-2") {
        Err(Error::ClientCertWrongNode {
            node,
            organization,
            common_name,
        }) => {
            assert_eq!(node, "edge-2");
            assert_eq!(organization, "system:nodes");
            assert_eq!(common_name, node_common_name("edge-1"));
        }
        other => panic!("{other:?}"),
    }
    assert!(ca.authorize_client_cert(&cert, "").is_err());
    assert!(ca.authorize_client_cert(&cert, "edge-1 ").is_err());
}

#[test]
fn authorize_accepts_legacy_kubeedge_certificates_for_any_node() {
    let ca = CertificateAuthority::generate().unwrap();
    let csr = custom_csr(name(Some("KubeEdge"), Some("kubeedge.io")), vec![]);
    let cert = ca.sign_edge_csr(&csr, ExtKeyUsage::DEFAULT, 30).unwrap();
    ca.authorize_client_cert(&cert, "edge-1").unwrap();
    ca.authorize_client_cert(&cert, "anything").unwrap();
}

#[test]
fn authorize_rejects_wrong_subjects_usages_and_issuers() {
    let ca = CertificateAuthority::generate().unwrap();
    let sign = |o: Option<&str>, cn: Option<&str>, usages: &[ExtKeyUsage]| {
        ca.sign_edge_csr(&custom_csr(name(o, cn), vec![]), usages, 30)
            .unwrap()
    };
    let client = ExtKeyUsage::DEFAULT;

    let no_org = sign(None, Some("system:node:edge-1"), client);
    assert!(matches!(
        ca.authorize_client_cert(&no_org, "edge-1"),
        Err(Error::ClientCertNoOrganization)
    ));
    // O[0] must be system:nodes, CN must be exactly system:node:<node>.
    for (o, cn) in [
        ("system:masters", "system:node:edge-1"),
        ("KubeEdge", "system:node:edge-1"),
        ("system:nodes", "kubeedge.io"),
        ("system:nodes", "edge-1"),
        ("KubeEdge", "KubeEdge"),
    ] {
        let cert = sign(Some(o), Some(cn), client);
        assert!(
            matches!(
                ca.authorize_client_cert(&cert, "edge-1"),
                Err(Error::ClientCertWrongNode { .. })
            ),
            "{o} {cn}"
        );
    }

    // serverAuth only: not for client authentication.
    let server_only = sign(
        Some("system:nodes"),
        Some("system:node:edge-1"),
        &[ExtKeyUsage::ServerAuth],
    );
    assert!(matches!(
        ca.authorize_client_cert(&server_only, "edge-1"),
        Err(Error::ClientCertUntrusted(_))
    ));
    // CloudCore's own server certificate is no client certificate either.
    let server = ca.issue_server_cert(&[], &["cloudcore"]).unwrap();
    assert!(
        ca.authorize_client_cert(&server.cert_der, "edge-1")
            .is_err()
    );
    // The CA certificate itself is not an end entity.
    assert!(ca.authorize_client_cert(ca.cert_der(), "edge-1").is_err());

    // Right subject, another CA.
    let other = CertificateAuthority::generate().unwrap();
    let foreign = edge_cert(&other, "edge-1", SystemTime::now(), 30);
    assert!(matches!(
        ca.authorize_client_cert(&foreign, "edge-1"),
        Err(Error::ClientCertUntrusted(_))
    ));
}

#[test]
fn authorize_checks_validity_period() {
    let ca = CertificateAuthority::generate_at(t0() - Duration::from_secs(DAY)).unwrap();
    let cert = edge_cert(&ca, "edge-1", t0(), 1);
    ca.authorize_client_cert_at(&cert, "edge-1", t0()).unwrap();
    ca.authorize_client_cert_at(&cert, "edge-1", t0() + Duration::from_secs(DAY - 1))
        .unwrap();
    for when in [
        t0() + Duration::from_secs(DAY + 1),
        t0() - Duration::from_secs(1),
    ] {
        assert!(matches!(
            ca.authorize_client_cert_at(&cert, "edge-1", when),
            Err(Error::ClientCertUntrusted(_))
        ));
    }
    // Expired by the clock.
    let old = edge_cert(
        &ca,
        "edge-1",
        SystemTime::now() - Duration::from_secs(10 * DAY),
        1,
    );
    assert!(matches!(
        ca.authorize_client_cert(&old, "edge-1"),
        Err(Error::ClientCertUntrusted(_))
    ));
}

#[test]
fn authorize_rejects_garbage_without_panicking() {
    let ca = CertificateAuthority::generate().unwrap();
    for garbage in [
        &b""[..],
        b"\x30",
        b"\x30\x00",
        b"\x30\x84\xff\xff\xff\xff",
        b"hello",
    ] {
        assert!(matches!(
            ca.authorize_client_cert(garbage, "edge-1"),
            Err(Error::ClientCertUntrusted(_))
        ));
    }
    assert!(matches!(
        ca.authorize_client_cert(&vec![0x30; 2 << 20], "edge-1"),
        Err(Error::TooLarge { .. })
    ));
    let good = edge_cert(&ca, "edge-1", SystemTime::now(), 30);
    for len in 0..good.len() {
        assert!(ca.authorize_client_cert(&good[..len], "edge-1").is_err());
    }
    for i in 0..good.len() {
        let mut cert = good.clone();
        cert[i] ^= 0x01;
        // Every single-bit change breaks the signature or the encoding.
        assert!(
            ca.authorize_client_cert(&cert, "edge-1").is_err(),
            "byte {i}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

fn parts(token: &str) -> Vec<&str> {
    token.split('.').collect()
}

/// A JWT over `header` and `payload` (JSON text) signed with HMAC-SHA256 under `key`.
fn craft_jwt(header: &str, payload: &str, key: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(input.as_bytes());
    let sig = mac.finalize().into_bytes();
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

const HS256: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

#[test]
fn token_format_is_kubeedges() {
    let ca = CertificateAuthority::generate().unwrap();
    let validity = Token::validity_for_refresh(Token::DEFAULT_REFRESH);
    assert_eq!(validity, Duration::from_secs(24 * 3600));
    let token = Token::issue(&ca, validity, t0() + Duration::from_millis(999));
    let p = parts(&token);
    assert_eq!(p.len(), 4);
    assert_eq!(p[0].len(), 64);
    assert!(
        p[0].bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(p[0], hex(&Sha256::digest(ca.cert_der())));

    assert_eq!(URL_SAFE_NO_PAD.decode(p[1]).unwrap(), HS256.as_bytes());
    let exp = secs(t0()) + 24 * 3600;
    assert_eq!(
        URL_SAFE_NO_PAD.decode(p[2]).unwrap(),
        format!(r#"{{"exp":{exp}}}"#).as_bytes()
    );
    // The signature is HMAC-SHA256 keyed with the CA key's DER, as KubeEdge's.
    assert_eq!(
        token[65..],
        craft_jwt(HS256, &format!(r#"{{"exp":{exp}}}"#), ca.key_der())
    );
    assert!(!token.contains('='));
}

#[test]
fn token_round_trip_and_expiry() {
    let ca = CertificateAuthority::generate().unwrap();
    let token = Token::issue(&ca, Duration::from_secs(DAY), t0());
    Token::verify(&token, &ca, t0()).unwrap();
    Token::verify(&token, &ca, t0() + Duration::from_secs(DAY - 1)).unwrap();
    for late in [DAY, DAY + 1, 365 * DAY] {
        assert!(matches!(
            Token::verify(&token, &ca, t0() + Duration::from_secs(late)),
            Err(Error::TokenExpired)
        ));
    }
    let jwt = Token::split_for_edge(&token, ca.cert_der()).unwrap();
    assert_eq!(jwt, token[65..]);
    Token::verify_bearer(&jwt, &ca, t0()).unwrap();
    Token::verify_authorization_header(&format!("Bearer {jwt}"), &ca, t0()).unwrap();
    Token::verify_authorization_header(&format!("bearer {jwt}"), &ca, t0()).unwrap();
    assert!(matches!(
        Token::verify_bearer(&jwt, &ca, t0() + Duration::from_secs(DAY)),
        Err(Error::TokenExpired)
    ));
}

#[test]
fn tampered_tokens_are_rejected() {
    let ca = CertificateAuthority::generate().unwrap();
    let token = Token::issue(&ca, Duration::from_secs(DAY), t0());
    let p = parts(&token);
    for part in 0..4 {
        for position in [0, p[part].len() / 2, p[part].len() - 1] {
            let mut q: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            let mut bytes = q[part].clone().into_bytes();
            bytes[position] = if bytes[position] == b'A' { b'B' } else { b'A' };
            q[part] = String::from_utf8(bytes).unwrap();
            let tampered = q.join(".");
            let result = Token::verify(&tampered, &ca, t0());
            assert!(
                result.is_err(),
                "part {part} position {position}: {tampered}"
            );
            if part == 0 {
                assert!(matches!(result, Err(Error::TokenCaHashMismatch { .. })));
                assert!(Token::split_for_edge(&tampered, ca.cert_der()).is_err());
            }
            if part == 3 {
                assert!(matches!(
                    result,
                    Err(Error::TokenSignature | Error::TokenBase64 { .. })
                ));
            }
        }
    }
}

#[test]
fn tokens_of_another_ca_are_rejected() {
    let ca = CertificateAuthority::generate().unwrap();
    let other = CertificateAuthority::generate().unwrap();
    let token = Token::issue(&other, Duration::from_secs(DAY), t0());
    assert!(matches!(
        Token::verify(&token, &ca, t0()),
        Err(Error::TokenCaHashMismatch { .. })
    ));
    // The edge notices the CA it fetched is not the token's.
    assert!(matches!(
        Token::split_for_edge(&token, ca.cert_der()),
        Err(Error::TokenCaHashMismatch { .. })
    ));
    let jwt = Token::split_for_edge(&token, other.cert_der()).unwrap();
    assert!(matches!(
        Token::verify_bearer(&jwt, &ca, t0()),
        Err(Error::TokenSignature)
    ));
}

#[test]
fn crafted_jwts_are_checked_like_golang_jwt() {
    let ca = CertificateAuthority::generate().unwrap();
    let key = ca.key_der();
    let exp = secs(t0()) + 60;
    let verify = |jwt: &str| Token::verify_bearer(jwt, &ca, t0());

    // Claims golang-jwt accepts: fractional exp, extra claims, nbf in the past, header order.
    verify(&craft_jwt(HS256, &format!(r#"{{"exp":{exp}.5}}"#), key)).unwrap();
    verify(&craft_jwt(
        r#"{"typ":"JWT","alg":"HS256"}"#,
        &format!(r#"{{"exp":{exp},"nbf":{},"sub":"x"}}"#, secs(t0())),
        key,
    ))
    .unwrap();

    assert!(matches!(
        verify(&craft_jwt(
            HS256,
            &format!(r#"{{"exp":{exp},"nbf":{}}}"#, exp - 1),
            key
        )),
        Err(Error::TokenNotYetValid)
    ));
    assert!(matches!(
        verify(&craft_jwt(HS256, "{}", key)),
        Err(Error::TokenMissingExpiry)
    ));
    assert!(matches!(
        verify(&craft_jwt(HS256, r#"{"exp":-5}"#, key)),
        Err(Error::TokenExpired)
    ));
    for payload in ["not json", "[1]", r#"{"exp":"soon"}"#, r#"{"exp":null}"#] {
        assert!(
            matches!(
                verify(&craft_jwt(HS256, payload, key)),
                Err(Error::TokenJson {
                    part: "payload",
                    ..
                })
            ),
            "{payload}"
        );
    }
    assert!(matches!(
        verify(&craft_jwt("nope", &format!(r#"{{"exp":{exp}}}"#), key)),
        Err(Error::TokenJson { part: "header", .. })
    ));
    for alg in ["HS384", "HS512", "none", "RS256", "hs256"] {
        let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
        match verify(&craft_jwt(&header, &format!(r#"{{"exp":{exp}}}"#), key)) {
            Err(Error::TokenAlgorithm(found)) => assert_eq!(found, alg),
            other => panic!("{alg}: {other:?}"),
        }
    }
    // alg "none" with an empty signature.
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#))
    );
    assert!(verify(&unsigned).is_err());
    // HS256 header with an empty signature.
    let good = craft_jwt(HS256, &format!(r#"{{"exp":{exp}}}"#), key);
    let stripped = &good[..good.rfind('.').unwrap() + 1];
    assert!(matches!(verify(stripped), Err(Error::TokenSignature)));
    // Padding is not base64url-without-padding.
    assert!(matches!(
        verify(&format!("{good}=")),
        Err(Error::TokenBase64 { part: "signature" })
    ));
    // Signed with another key.
    let forged = craft_jwt(HS256, &format!(r#"{{"exp":{exp}}}"#), b"guess");
    assert!(matches!(verify(&forged), Err(Error::TokenSignature)));
}

#[test]
fn malformed_tokens_and_headers_are_rejected() {
    let ca = CertificateAuthority::generate().unwrap();
    let token = Token::issue(&ca, Duration::from_secs(DAY), t0());
    let jwt = Token::split_for_edge(&token, ca.cert_der()).unwrap();

    for bad in [
        "",
        ".",
        "...",
        "....",
        "a.b.c",
        "a.b.c.d.e",
        "é.é.é.é",
        "\0.\0.\0",
    ] {
        assert!(Token::verify(bad, &ca, t0()).is_err(), "{bad:?}");
        assert!(Token::verify_bearer(bad, &ca, t0()).is_err(), "{bad:?}");
        assert!(
            Token::split_for_edge(bad, ca.cert_der()).is_err(),
            "{bad:?}"
        );
    }
    // The whole token is not a JWT, and a JWT is not a whole token.
    assert!(Token::verify_bearer(&token, &ca, t0()).is_err());
    assert!(Token::verify(&jwt, &ca, t0()).is_err());
    assert!(matches!(
        Token::split_for_edge(&jwt, ca.cert_der()),
        Err(Error::TokenMalformed(_))
    ));
    assert!(Token::split_for_edge(&format!("{token}.x"), ca.cert_der()).is_err());

    for header in [
        String::new(),
        "Bearer".to_owned(),
        format!("Bearer  {jwt}"),
        format!("Bearer {jwt} x"),
        format!("Basic {jwt}"),
        format!("Bearer {token}"),
        jwt.clone(),
    ] {
        assert!(
            Token::verify_authorization_header(&header, &ca, t0()).is_err(),
            "{header:?}"
        );
    }

    let huge = format!("{}.{}", "a".repeat(64), "b".repeat(1 << 20));
    for result in [
        Token::verify(&huge, &ca, t0()).map(drop),
        Token::verify_bearer(&huge, &ca, t0()).map(drop),
        Token::verify_authorization_header(&huge, &ca, t0()).map(drop),
        Token::split_for_edge(&huge, ca.cert_der()).map(drop),
    ] {
        assert!(matches!(result, Err(Error::TooLarge { what: "token", .. })));
    }

    // Every single-character change of a valid token is refused.
    let alphabet = b"AZaz09-_.=+/ ";
    for i in 0..token.len() {
        for &c in alphabet {
            let mut bytes = token.clone().into_bytes();
            if bytes[i] == c {
                continue;
            }
            bytes[i] = c;
            let t = String::from_utf8(bytes).unwrap();
            assert!(Token::verify(&t, &ca, t0()).is_err(), "{t}");
        }
    }
}

#[test]
fn token_times_before_the_epoch_and_huge_validities_do_not_panic() {
    let ca = CertificateAuthority::generate().unwrap();
    let before_epoch = UNIX_EPOCH - Duration::from_secs(10);
    let token = Token::issue(&ca, Duration::from_secs(60), before_epoch);
    Token::verify(&token, &ca, before_epoch).unwrap();
    let forever = Token::issue(&ca, Duration::MAX, t0());
    Token::verify(&forever, &ca, t0()).unwrap();
}
