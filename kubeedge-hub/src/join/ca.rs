//! The cluster CA: generation, loading and saving, the CloudCore server certificate, signing edge
//! CSRs and authorizing edge client certificates.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use kubeedge_proto::NodeName;

use super::csr::{ExtKeyUsage, ParsedCsr, parse_csr};
use super::go_der::{go_string, load_key, sec1_from_key_pair};
use super::{
    CA_VALIDITY_DAYS, LEGACY_EDGE_COMMON_NAME, MAX_CERT_LEN, NODE_ORGANIZATION, PROJECT_NAME,
    check_len, node_common_name, pem_encode, random_bytes, unix_secs,
};

/// The CA certificate's serial number (KubeEdge's `big.NewInt(1024)`).
const CA_SERIAL: u64 = 1024;

const SECS_PER_DAY: i64 = 24 * 60 * 60;

/// The cluster certificate authority: an ECDSA key and its self-signed certificate.
///
/// Loaded with [`from_pem`](Self::from_pem) (CloudCore's `rootCA.crt` / `rootCA.key`) or
/// [`from_der`](Self::from_der) (the `kubeedge/casecret` Secret: `cadata` / `cakeydata`), or
/// made with [`generate`](Self::generate). Share it behind an `Arc`; every method takes `&self`.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    /// The private key as SEC1 DER: the HMAC key of the tokens.
    key_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    hash: String,
}

/// A certificate and its freshly generated private key, issued by the CA.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate as PEM (`CERTIFICATE`).
    pub cert_pem: String,
    /// The private key as SEC1 PEM (`EC PRIVATE KEY`).
    pub key_pem: String,
    /// The certificate as DER (the Secret's `cloudcoredata`).
    pub cert_der: Vec<u8>,
    /// The private key as SEC1 DER (the Secret's `cloudcorekeydata`).
    pub key_der: Vec<u8>,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_der", &format_args!("{} bytes", self.cert_der.len()))
            .field("key", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("ca_hash", &self.hash)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CertificateAuthority {
    /// Creates a new CA as CloudCore does when it finds none: ECDSA P-256, self-signed,
    /// `CN=KubeEdge`, serial 1024, valid from now for 100 × 364 days, a CA (basic constraints
    /// without a path length), key usage keyEncipherment + digitalSignature + keyCertSign,
    /// extended key usage serverAuth + clientAuth.
    pub fn generate() -> Result<Self, crate::Error> {
        Self::generate_at(SystemTime::now())
    }

    /// [`generate`](Self::generate) with the validity starting at `now`.
    pub fn generate_at(now: SystemTime) -> Result<Self, crate::Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generation)?;
        let mut params = CertificateParams::default();
        params.serial_number = Some(SerialNumber::from(CA_SERIAL));
        params.distinguished_name = go_name(None, PROJECT_NAME);
        set_validity(&mut params, now, CA_VALIDITY_DAYS)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyCertSign,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.self_signed(&key).map_err(generation)?;
        let key_der = sec1_from_key_pair(&key)?;
        Self::assemble(cert.der().clone(), key_der, key)
    }

    /// Loads a CA from DER: the certificate and its private key, SEC1 (as KubeEdge stores it)
    /// or PKCS #8. ECDSA P-256 and P-384 keys are accepted.
    pub fn from_der(cert_der: &[u8], key_der: &[u8]) -> Result<Self, crate::Error> {
        check_len("CA private key", key_der.len(), MAX_CERT_LEN)?;
        let key =
            PrivateKeyDer::try_from(key_der).map_err(|e| crate::Error::PrivateKey(e.to_owned()))?;
        Self::load(cert_der, &key)
    }

    /// Loads a CA from PEM: the first `CERTIFICATE` block of `cert_pem` and the first private key
    /// block of `key_pem` (`EC PRIVATE KEY` as KubeEdge writes it, or `PRIVATE KEY`).
    pub fn from_pem(
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, crate::Error> {
        let (cert_pem, key_pem) = (cert_pem.as_ref(), key_pem.as_ref());
        check_len("CA certificate PEM", cert_pem.len(), MAX_CERT_LEN)?;
        check_len("CA private key PEM", key_pem.len(), MAX_CERT_LEN)?;
        let cert = CertificateDer::from_pem_slice(cert_pem).map_err(|e| crate::Error::Pem {
            what: "certificate",
            reason: e.to_string(),
        })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| crate::Error::Pem {
            what: "private key",
            reason: e.to_string(),
        })?;
        Self::load(&cert, &key)
    }

    fn load(cert_der: &[u8], key: &PrivateKeyDer<'_>) -> Result<Self, crate::Error> {
        check_len("CA certificate", cert_der.len(), MAX_CERT_LEN)?;
        let cert = parse_certificate(cert_der).map_err(crate::Error::CaCertificate)?;
        let spki = cert.public_key();
        let cert_curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|oid| oid.as_bytes().to_vec());
        let (key_pair, key_der) = load_key(key, cert_curve.as_deref())?;
        if key_pair.public_key_raw() != spki.subject_public_key.data.as_ref() {
            return Err(crate::Error::KeyMismatch);
        }
        Self::assemble(CertificateDer::from(cert_der.to_vec()), key_der, key_pair)
    }

    fn assemble(
        cert_der: CertificateDer<'static>,
        key_der: Vec<u8>,
        key: KeyPair,
    ) -> Result<Self, crate::Error> {
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| crate::Error::CaCertificate(e.to_string()))?;
        let mut roots = RootCertStore::empty();
        roots
            .add(cert_der.clone())
            .map_err(|e| crate::Error::CaCertificate(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| crate::Error::CaCertificate(e.to_string()))?;
        let hash = super::ca_hash(&cert_der);
        Ok(Self {
            cert_der,
            key_der,
            issuer,
            client_verifier,
            hash,
        })
    }

    /// The CA certificate as DER: the body of `GET /ca.crt` and the Secret's `cadata`.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA private key as DER (the Secret's `cakeydata`): SEC1 as KubeEdge writes it, or the
    /// bytes it was loaded from if they were SEC1. These bytes are the HMAC key of the tokens.
    pub fn key_der(&self) -> &[u8] {
        &self.key_der
    }

    /// The CA certificate as PEM (`rootCA.crt`).
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// The CA private key as SEC1 PEM, `EC PRIVATE KEY` (`rootCA.key`).
    pub fn key_pem(&self) -> String {
        pem_encode("EC PRIVATE KEY", &self.key_der)
    }

    /// The certificate and the private key as PEM: `(cert_pem, key_pem)`, readable by
    /// [`from_pem`](Self::from_pem) and by KubeEdge.
    pub fn to_pem(&self) -> (String, String) {
        (self.cert_pem(), self.key_pem())
    }

    /// The lowercase hex SHA-256 of the CA certificate's DER, the first part of a token.
    pub fn ca_hash(&self) -> &str {
        &self.hash
    }

    /// A rustls verifier that requires client certificates chaining to this CA with the
    /// clientAuth extended key usage (what CloudHub's WebSocket server asks of edge nodes).
    pub fn client_cert_verifier(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.client_verifier)
    }

    /// Issues CloudCore's server certificate with a fresh P-256 key: `CN=KubeEdge, O=KubeEdge`,
    /// extended key usage serverAuth, key usage keyEncipherment + digitalSignature, SANs `ips`
    /// (the advertise addresses) and `dns_names`, a random serial, valid from now for
    /// 100 × 364 days.
    pub fn issue_server_cert(
        &self,
        ips: &[IpAddr],
        dns_names: &[impl AsRef<str>],
    ) -> Result<IssuedCert, crate::Error> {
        self.issue_server_cert_at(ips, dns_names, SystemTime::now())
    }

    /// [`issue_server_cert`](Self::issue_server_cert) with the validity starting at `now`.
    pub fn issue_server_cert_at(
        &self,
        ips: &[IpAddr],
        dns_names: &[impl AsRef<str>],
        now: SystemTime,
    ) -> Result<IssuedCert, crate::Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generation)?;
        let mut params = leaf_params(now, CA_VALIDITY_DAYS)?;
        params.distinguished_name = go_name(Some(PROJECT_NAME), PROJECT_NAME);
        params.subject_alt_names = sans(dns_names, ips.iter().copied())?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).map_err(generation)?;
        let cert_der = cert.der().to_vec();
        let key_der = sec1_from_key_pair(&key)?;
        Ok(IssuedCert {
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            key_pem: pem_encode("EC PRIVATE KEY", &key_der),
            cert_der,
            key_der,
        })
    }

    /// Signs an edge node's CSR (the body of `GET /edge.crt`) and returns the certificate's DER.
    ///
    /// As KubeEdge: the common name, the organization and the DNS and IP SANs are copied from
    /// the CSR (country, locality and the rest of its subject are not); the serial is random;
    /// key usage keyEncipherment + digitalSignature; extended key usages `ext_key_usages`
    /// (KubeEdge's default is [`ExtKeyUsage::DEFAULT`], clientAuth); valid from now for
    /// `validity_days` days (default [`DEFAULT_EDGE_CERT_VALIDITY_DAYS`]).
    ///
    /// Unlike KubeEdge, the CSR's own signature must verify (proof of possession of the key), and
    /// only its first organization is copied. The CSR must have a common name and
    /// `ext_key_usages` must not be empty, as in KubeEdge.
    ///
    /// [`DEFAULT_EDGE_CERT_VALIDITY_DAYS`]: super::DEFAULT_EDGE_CERT_VALIDITY_DAYS
    pub fn sign_edge_csr(
        &self,
        csr_der: &[u8],
        ext_key_usages: &[ExtKeyUsage],
        validity_days: u32,
    ) -> Result<Vec<u8>, crate::Error> {
        self.sign_edge_csr_at(csr_der, ext_key_usages, validity_days, SystemTime::now())
    }

    /// [`sign_edge_csr`](Self::sign_edge_csr) with the validity starting at `now`.
    pub fn sign_edge_csr_at(
        &self,
        csr_der: &[u8],
        ext_key_usages: &[ExtKeyUsage],
        validity_days: u32,
        now: SystemTime,
    ) -> Result<Vec<u8>, crate::Error> {
        let csr = parse_csr(csr_der)?;
        if ext_key_usages.is_empty() {
            return Err(crate::Error::NoExtKeyUsages);
        }
        if csr.organizations.len() > 1 {
            tracing::warn!(
                organizations = ?csr.organizations,
                common_name = %csr.common_name,
                "CSR has several organizations; only the first is copied into the certificate"
            );
        }
        let mut params = leaf_params(now, validity_days)?;
        params.distinguished_name = go_name(
            csr.organizations.first().map(String::as_str),
            &csr.common_name,
        );
        params.subject_alt_names = sans(&csr.dns_names, csr.ips.iter().copied())?;
        params.extended_key_usages = ext_key_usages.iter().map(|u| u.to_rcgen()).collect();
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(generation)?;
        Ok(cert.der().to_vec())
    }

    /// Signs the CSR of node `node` as the join server does: the CSR's subject must be exactly
    /// `O=system:nodes, CN=system:node:<node>` (country, province and locality, which KubeEdge's
    /// edgecore adds, are allowed and not copied) and it must ask for no subject alternative
    /// names; the certificate is `O=system:nodes, CN=system:node:<node>`, clientAuth only, with
    /// a random serial, valid from now for `validity_days` days.
    ///
    /// This is what stops a join token (or a node's certificate) from buying a certificate for
    /// another identity; KubeEdge copies whatever subject and usages the request asks for
    /// ([`sign_edge_csr`](Self::sign_edge_csr) does that, for tools and tests).
    pub fn sign_node_csr(
        &self,
        csr_der: &[u8],
        node: &NodeName,
        validity_days: u32,
    ) -> Result<Vec<u8>, crate::Error> {
        self.sign_node_csr_at(csr_der, node, validity_days, SystemTime::now())
    }

    /// Whether [`sign_node_csr`](Self::sign_node_csr) would sign `csr_der` for `node`: the
    /// CSR verifies and asks for exactly that node's identity.
    pub fn check_node_csr(&self, csr_der: &[u8], node: &NodeName) -> Result<(), crate::Error> {
        node_csr(csr_der, node).map(drop)
    }

    /// [`sign_node_csr`](Self::sign_node_csr) with the validity starting at `now`.
    pub fn sign_node_csr_at(
        &self,
        csr_der: &[u8],
        node: &NodeName,
        validity_days: u32,
        now: SystemTime,
    ) -> Result<Vec<u8>, crate::Error> {
        let csr = node_csr(csr_der, node)?;
        let common_name = node_common_name(node.as_str());
        let mut params = leaf_params(now, validity_days)?;
        params.distinguished_name = go_name(Some(NODE_ORGANIZATION), &common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(generation)?;
        Ok(cert.der().to_vec())
    }

    /// Decides whether the client certificate an edge presented on `/edge.crt` may have a
    /// certificate issued for `node_name` (the `NodeName` header), as KubeEdge's `verifyCert`:
    /// the certificate must chain to this CA, be valid now and allow clientAuth, and its subject
    /// must be `O=system:nodes, CN=system:node:<node_name>` or the legacy
    /// `O=KubeEdge, CN=kubeedge.io` (any node).
    pub fn authorize_client_cert(
        &self,
        cert_der: &[u8],
        node_name: &str,
    ) -> Result<(), crate::Error> {
        self.authorize_client_cert_at(cert_der, node_name, SystemTime::now())
    }

    /// [`authorize_client_cert`](Self::authorize_client_cert) checking validity at `now`.
    pub fn authorize_client_cert_at(
        &self,
        cert_der: &[u8],
        node_name: &str,
        now: SystemTime,
    ) -> Result<(), crate::Error> {
        check_len("client certificate", cert_der.len(), MAX_CERT_LEN)?;
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        self.client_verifier
            .verify_client_cert(
                &CertificateDer::from(cert_der),
                &[],
                UnixTime::since_unix_epoch(since_epoch),
            )
            .map_err(|e| crate::Error::ClientCertUntrusted(e.to_string()))?;
        let cert = parse_certificate(cert_der).map_err(crate::Error::ClientCertUntrusted)?;
        let subject = cert.subject();
        // Go's pkix.Name: Organization collects every O in order; CommonName is the last CN.
        let organization = subject
            .iter_organization()
            .find_map(|o| o.as_str().ok())
            .ok_or(crate::Error::ClientCertNoOrganization)?;
        let common_name = subject
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .last()
            .unwrap_or_default();
        let legacy = organization == PROJECT_NAME && common_name == LEGACY_EDGE_COMMON_NAME;
        let node = organization == NODE_ORGANIZATION && common_name == node_common_name(node_name);
        if legacy || node {
            Ok(())
        } else {
            Err(crate::Error::ClientCertWrongNode {
                node: node_name.to_owned(),
                organization: organization.to_owned(),
                common_name: common_name.to_owned(),
            })
        }
    }
}

/// Parses a CSR that must ask for exactly `node`'s identity (see
/// [`CertificateAuthority::sign_node_csr`]).
fn node_csr(csr_der: &[u8], node: &NodeName) -> Result<ParsedCsr, crate::Error> {
    let csr = parse_csr(csr_der)?;
    let common_name = node_common_name(node.as_str());
    if csr.common_name != common_name || csr.organizations != [NODE_ORGANIZATION] {
        return Err(crate::Error::CsrWrongSubject {
            node: node.to_string(),
            expected: format!("O={NODE_ORGANIZATION}, CN={common_name}"),
            found: format!(
                "O={:?}, CN={:?}",
                csr.organizations,
                excerpt(&csr.common_name)
            ),
        });
    }
    if csr.has_alt_names {
        return Err(crate::Error::CsrAltNames);
    }
    Ok(csr)
}

/// At most 80 characters of `s`, for error messages about hostile input.
fn excerpt(s: &str) -> String {
    s.chars().take(80).collect()
}

fn generation(e: rcgen::Error) -> crate::Error {
    crate::Error::Generation(e.to_string())
}

/// Parses a whole DER certificate (no trailing bytes, as Go's `x509.ParseCertificate`).
fn parse_certificate(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err("trailing data after the certificate".to_owned());
    }
    Ok(cert)
}

/// Parameters shared by the server and edge certificates KubeEdge signs (`SignCerts`): random
/// 63-bit serial, validity, key usage keyEncipherment + digitalSignature, not a CA, an authority
/// key identifier.
fn leaf_params(now: SystemTime, validity_days: u32) -> Result<CertificateParams, crate::Error> {
    let mut params = CertificateParams::default();
    let serial = u64::from_be_bytes(random_bytes::<8>()?) & (u64::MAX >> 1);
    params.serial_number = Some(SerialNumber::from(serial.max(1)));
    set_validity(&mut params, now, validity_days)?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.is_ca = IsCa::NoCa;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn set_validity(
    params: &mut CertificateParams,
    now: SystemTime,
    days: u32,
) -> Result<(), crate::Error> {
    use x509_parser::time::ASN1Time;
    let start = unix_secs(now)?;
    let end = start
        .checked_add(i64::from(days) * SECS_PER_DAY)
        .ok_or_else(|| crate::Error::TimeOutOfRange(format!("{days} days after {start}")))?;
    let at = |secs: i64| {
        ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|e| crate::Error::TimeOutOfRange(format!("{secs} s after 1970: {e}")))
    };
    params.not_before = at(start)?;
    params.not_after = at(end)?;
    Ok(())
}

/// A subject as Go's `pkix.Name{Organization: [o], CommonName: cn}` encodes it: O before CN,
/// PrintableString when the value allows it, else UTF8String.
fn go_name(organization: Option<&str>, common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, go_string(o));
    }
    dn.push(DnType::CommonName, go_string(common_name));
    dn
}

/// Subject alternative names in Go's order: DNS names, then IP addresses.
fn sans(
    dns_names: &[impl AsRef<str>],
    ips: impl Iterator<Item = IpAddr>,
) -> Result<Vec<SanType>, crate::Error> {
    let mut out = Vec::new();
    for name in dns_names {
        let name = name.as_ref();
        let ia5 =
            rcgen::string::Ia5String::try_from(name).map_err(|e| crate::Error::InvalidName {
                name: name.to_owned(),
                reason: e.to_string(),
            })?;
        out.push(SanType::DnsName(ia5));
    }
    out.extend(ips.map(SanType::IpAddress));
    Ok(out)
}
