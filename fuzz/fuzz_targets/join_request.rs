//! What a joining edge sends the join server (hostile: anyone who reaches port 10002): the
//! `NodeName` header, the `Authorization` header with its JWT, the `ExtKeyUsages` header and the
//! CSR body. None of them panics; whatever the server would sign is exactly the named node's
//! identity (`O=system:nodes, CN=system:node:<node>`, clientAuth only, no SANs).
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use kubeedge_hub::join::{CertificateAuthority, ExtKeyUsage, Token};
use kubeedge_proto::NodeName;
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static Arc<CertificateAuthority> {
    static CA: OnceLock<Arc<CertificateAuthority>> = OnceLock::new();
    CA.get_or_init(|| Arc::new(CertificateAuthority::generate().expect("a CA")))
}

fuzz_target!(|data: &[u8]| {
    // Three text fields then the CSR: `node \n authorization \n usages \n csr...`.
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let (node, authorization, usages) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let csr = parts.next().unwrap_or_default();
    let ca = ca();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok(authorization) = std::str::from_utf8(authorization)
        && let Ok(claims) = Token::verify_authorization_header(authorization, ca, now)
    {
        assert!(claims.expires > now, "a verified token has not expired");
    }
    if let Ok(usages) = std::str::from_utf8(usages) {
        let _ = ExtKeyUsage::parse_header(usages);
    }
    let Ok(node) = std::str::from_utf8(node).map(NodeName::new) else {
        return;
    };
    let Ok(node) = node else { return };
    if let Ok(der) = ca.sign_node_csr_at(csr, &node, 1, now) {
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("a signed certificate");
        let cn: Vec<_> = cert.subject().iter_common_name().collect();
        assert_eq!(cn.len(), 1);
        assert_eq!(
            cn[0].as_str().unwrap(),
            format!("system:node:{node}"),
            "only the node's own identity is signed"
        );
        let orgs: Vec<_> = cert.subject().iter_organization().collect();
        assert_eq!(orgs.len(), 1);
        assert_eq!(orgs[0].as_str().unwrap(), "system:nodes");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth && !eku.any);
        assert!(cert.subject_alternative_name().unwrap().is_none());
    } else {
        // What the server checks before spending a single-use token agrees with signing.
        assert!(
            ca.check_node_csr(csr, &node).is_err(),
            "a CSR that passes the check is signed"
        );
    }
});
