//! Certificate signing requests: the edge's (made as edgecore makes them) and the cloud's reading
//! of them, and the extended key usages a request asks for.

use std::fmt;
use std::net::IpAddr;

use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_ALT_NAME;
use x509_parser::prelude::FromDer;

use super::go_der::{go_string, sec1_from_key_pair};
use super::{MAX_CSR_LEN, NODE_ORGANIZATION, check_len, node_common_name, pem_encode};

/// The longest `ExtKeyUsages` header value read.
const MAX_EXT_KEY_USAGES_HEADER_LEN: usize = 4096;

/// An extended key usage, numbered as Go's `crypto/x509.ExtKeyUsage`: the numbers travel in the
/// `ExtKeyUsages` header of `/edge.crt` as a JSON array (`[2]` is clientAuth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ExtKeyUsage {
    /// `ExtKeyUsageAny` (0), anyExtendedKeyUsage.
    Any = 0,
    /// `ExtKeyUsageServerAuth` (1), TLS server authentication.
    ServerAuth = 1,
    /// `ExtKeyUsageClientAuth` (2), TLS client authentication: KubeEdge's default.
    ClientAuth = 2,
    /// `ExtKeyUsageCodeSigning` (3).
    CodeSigning = 3,
    /// `ExtKeyUsageEmailProtection` (4).
    EmailProtection = 4,
    /// `ExtKeyUsageIPSECEndSystem` (5).
    IpsecEndSystem = 5,
    /// `ExtKeyUsageIPSECTunnel` (6).
    IpsecTunnel = 6,
    /// `ExtKeyUsageIPSECUser` (7).
    IpsecUser = 7,
    /// `ExtKeyUsageTimeStamping` (8).
    TimeStamping = 8,
    /// `ExtKeyUsageOCSPSigning` (9).
    OcspSigning = 9,
    /// `ExtKeyUsageMicrosoftServerGatedCrypto` (10).
    MicrosoftServerGatedCrypto = 10,
    /// `ExtKeyUsageNetscapeServerGatedCrypto` (11).
    NetscapeServerGatedCrypto = 11,
    /// `ExtKeyUsageMicrosoftCommercialCodeSigning` (12).
    MicrosoftCommercialCodeSigning = 12,
    /// `ExtKeyUsageMicrosoftKernelCodeSigning` (13).
    MicrosoftKernelCodeSigning = 13,
}

impl ExtKeyUsage {
    /// What KubeEdge signs when the request names no usages: clientAuth.
    pub const DEFAULT: &'static [ExtKeyUsage] = &[ExtKeyUsage::ClientAuth];

    const ALL: [ExtKeyUsage; 14] = [
        ExtKeyUsage::Any,
        ExtKeyUsage::ServerAuth,
        ExtKeyUsage::ClientAuth,
        ExtKeyUsage::CodeSigning,
        ExtKeyUsage::EmailProtection,
        ExtKeyUsage::IpsecEndSystem,
        ExtKeyUsage::IpsecTunnel,
        ExtKeyUsage::IpsecUser,
        ExtKeyUsage::TimeStamping,
        ExtKeyUsage::OcspSigning,
        ExtKeyUsage::MicrosoftServerGatedCrypto,
        ExtKeyUsage::NetscapeServerGatedCrypto,
        ExtKeyUsage::MicrosoftCommercialCodeSigning,
        ExtKeyUsage::MicrosoftKernelCodeSigning,
    ];

    /// The usage with Go's number `value`, if Go defines one.
    pub fn from_go(value: i64) -> Option<Self> {
        usize::try_from(value)
            .ok()
            .and_then(|i| Self::ALL.get(i).copied())
    }

    /// Go's number for this usage.
    pub fn go_value(self) -> i64 {
        self as i64
    }

    /// Reads an `ExtKeyUsages` header value as KubeEdge does: empty (or absent) means
    /// [`DEFAULT`](Self::DEFAULT); otherwise a JSON array of Go's numbers (`null` and `[]` give
    /// an empty list, which signing then refuses). Unknown numbers are an error.
    pub fn parse_header(value: &str) -> Result<Vec<Self>, crate::Error> {
        check_len(
            "ExtKeyUsages header",
            value.len(),
            MAX_EXT_KEY_USAGES_HEADER_LEN,
        )?;
        let value = value.trim();
        if value.is_empty() {
            return Ok(Self::DEFAULT.to_vec());
        }
        let numbers: Option<Vec<i64>> = serde_json::from_str(value)
            .map_err(|e| crate::Error::ExtKeyUsagesHeader(e.to_string()))?;
        numbers
            .unwrap_or_default()
            .into_iter()
            .map(|n| Self::from_go(n).ok_or(crate::Error::UnknownExtKeyUsage(n)))
            .collect()
    }

    /// The `ExtKeyUsages` header value asking for `usages`, for example `[1,2]`.
    pub fn header_value(usages: &[Self]) -> String {
        let numbers: Vec<String> = usages.iter().map(|u| u.go_value().to_string()).collect();
        format!("[{}]", numbers.join(","))
    }

    pub(super) fn to_rcgen(self) -> ExtendedKeyUsagePurpose {
        use ExtendedKeyUsagePurpose as P;
        let other = |oid: &[u64]| P::Other(oid.to_vec());
        match self {
            Self::Any => P::Any,
            Self::ServerAuth => P::ServerAuth,
            Self::ClientAuth => P::ClientAuth,
            Self::CodeSigning => P::CodeSigning,
            Self::EmailProtection => P::EmailProtection,
            Self::IpsecEndSystem => other(&[1, 3, 6, 1, 5, 5, 7, 3, 5]),
            Self::IpsecTunnel => other(&[1, 3, 6, 1, 5, 5, 7, 3, 6]),
            Self::IpsecUser => other(&[1, 3, 6, 1, 5, 5, 7, 3, 7]),
            Self::TimeStamping => P::TimeStamping,
            Self::OcspSigning => P::OcspSigning,
            Self::MicrosoftServerGatedCrypto => other(&[1, 3, 6, 1, 4, 1, 311, 10, 3, 3]),
            Self::NetscapeServerGatedCrypto => other(&[2, 16, 840, 1, 113_730, 4, 1]),
            Self::MicrosoftCommercialCodeSigning => other(&[1, 3, 6, 1, 4, 1, 311, 2, 1, 22]),
            Self::MicrosoftKernelCodeSigning => other(&[1, 3, 6, 1, 4, 1, 311, 61, 1, 1]),
        }
    }
}

/// A fresh edge key and the CSR for it, made as edgecore's `GetEdgeCert` makes them.
#[derive(Clone, PartialEq, Eq)]
pub struct EdgeCsr {
    /// The new private key as SEC1 PEM (`EC PRIVATE KEY`), as edgecore writes `server.key`.
    pub key_pem: String,
    /// The new private key as SEC1 DER.
    pub key_der: Vec<u8>,
    /// The CSR as DER: the body of `GET /edge.crt`.
    pub csr_der: Vec<u8>,
}

impl fmt::Debug for EdgeCsr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeCsr")
            .field("csr_der", &format_args!("{} bytes", self.csr_der.len()))
            .field("key", &"<redacted>")
            .finish()
    }
}

impl EdgeCsr {
    /// A new ECDSA P-256 key and a CSR for it with the subject
    /// `C=CN, ST=Zhejiang, L=Hangzhou, O=system:nodes, CN=system:node:<node_name>`, no SANs and
    /// no extensions, signed with ECDSA-SHA256.
    pub fn new(node_name: &str) -> Result<Self, crate::Error> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| crate::Error::Generation(e.to_string()))?;
        // Go's pkix.Name order: C, ST, L, O, CN.
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, go_string("CN"));
        dn.push(DnType::StateOrProvinceName, go_string("Zhejiang"));
        dn.push(DnType::LocalityName, go_string("Hangzhou"));
        dn.push(DnType::OrganizationName, go_string(NODE_ORGANIZATION));
        dn.push(DnType::CommonName, go_string(&node_common_name(node_name)));
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        let csr = params
            .serialize_request(&key)
            .map_err(|e| crate::Error::Generation(e.to_string()))?;
        let key_der = sec1_from_key_pair(&key)?;
        Ok(Self {
            key_pem: pem_encode("EC PRIVATE KEY", &key_der),
            key_der,
            csr_der: csr.der().to_vec(),
        })
    }
}

/// What the cloud takes from a CSR.
pub(super) struct ParsedCsr {
    /// The last common name, as Go's `pkix.Name.CommonName`.
    pub(super) common_name: String,
    /// Every organization, in order.
    pub(super) organizations: Vec<String>,
    pub(super) dns_names: Vec<String>,
    pub(super) ips: Vec<IpAddr>,
    /// Whether the CSR asks for any subject alternative name (of any kind).
    pub(super) has_alt_names: bool,
    pub(super) public_key: rcgen::SubjectPublicKeyInfo,
}

/// Parses a DER CSR and checks its signature.
pub(super) fn parse_csr(der: &[u8]) -> Result<ParsedCsr, crate::Error> {
    check_len("CSR", der.len(), MAX_CSR_LEN)?;
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| crate::Error::CsrInvalid(e.to_string()))?;
    if !rest.is_empty() {
        return Err(crate::Error::CsrInvalid(
            "trailing data after the CSR".to_owned(),
        ));
    }
    csr.verify_signature()
        .map_err(|_| crate::Error::CsrSignature)?;
    let info = &csr.certification_request_info;

    let common_name = info
        .subject
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .last()
        .filter(|cn| !cn.is_empty())
        .ok_or(crate::Error::CsrMissingCommonName)?
        .to_owned();
    let organizations = info
        .subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();

    let mut dns_names = Vec::new();
    let mut ips = Vec::new();
    let mut has_alt_names = false;
    for attribute in info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() else {
            continue;
        };
        for extension in &request.extensions {
            if extension.oid != OID_X509_EXT_SUBJECT_ALT_NAME {
                continue;
            }
            let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() else {
                return Err(crate::Error::CsrInvalid(
                    "unreadable subject alternative names".to_owned(),
                ));
            };
            has_alt_names |= !san.general_names.is_empty();
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                    GeneralName::IPAddress(bytes) => ips.push(ip_from_bytes(bytes)?),
                    _ => {}
                }
            }
        }
    }

    let public_key = rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw)
        .map_err(|e| crate::Error::CsrPublicKey(e.to_string()))?;
    Ok(ParsedCsr {
        common_name,
        organizations,
        dns_names,
        ips,
        has_alt_names,
        public_key,
    })
}

fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, crate::Error> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::from(v4));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::from(v6));
    }
    Err(crate::Error::CsrInvalid(format!(
        "IP address SAN of {} bytes",
        bytes.len()
    )))
}
