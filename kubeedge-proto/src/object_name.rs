//! Kubernetes names: DNS-1123 subdomains and labels, and [`NodeName`], a node's name checked
//! once where it enters (a certificate, a header, a config file) and passed on as a type.

use std::fmt;

use crate::{Error, Result};

/// The longest DNS-1123 subdomain (an object or node name).
pub const MAX_SUBDOMAIN_LEN: usize = 253;

/// The longest DNS-1123 label (a namespace, a label's name part).
pub const MAX_LABEL_LEN: usize = 63;

/// Whether `s` is a DNS-1123 label: 1 to 63 of `a-z 0-9 -`, starting and ending alphanumeric
/// (Kubernetes' `IsDNS1123Label`).
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Whether `s` is a DNS-1123 subdomain: 1 to 253 characters, dot-separated parts of
/// `a-z 0-9 -` each starting and ending alphanumeric (Kubernetes' `IsDNS1123Subdomain`, what
/// it accepts as a Node's or a Pod's name).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBDOMAIN_LEN
        && s.split('.').all(|part| {
            let b = part.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// A node's name: a DNS-1123 subdomain (what the API server accepts as a Node's
/// `metadata.name`), checked when it is made.
///
/// ```
/// use kubeedge_proto::NodeName;
///
/// let node = NodeName::new("edge-1")?;
/// assert_eq!(node.as_str(), "edge-1");
/// assert!(NodeName::new("Edge_1").is_err());
/// assert!(NodeName::new("system:node:edge-1").is_err());
/// # Ok::<(), kubeedge_proto::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(String);

impl NodeName {
    /// `name` if it is a valid node name, else [`Error::Validation`] saying why.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        if name.is_empty() {
            return Err(Error::Validation("a node name is empty".to_owned()));
        }
        if name.len() > MAX_SUBDOMAIN_LEN {
            return Err(Error::Validation(format!(
                "a node name is at most {MAX_SUBDOMAIN_LEN} bytes, not {}",
                name.len()
            )));
        }
        if !is_dns_subdomain(&name) {
            let shown: String = name.chars().take(80).collect();
            return Err(Error::Validation(format!(
                "{shown:?} is not a node name (a lower-case DNS-1123 subdomain: a-z, 0-9, '-' and '.')"
            )));
        }
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for NodeName {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for NodeName {
    fn eq(&self, other: &String) -> bool {
        self.0 == *other
    }
}

impl std::str::FromStr for NodeName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdomains_and_labels() {
        for ok in ["a", "edge-1", "edge.example.com", "0", &"a".repeat(253)] {
            assert!(is_dns_subdomain(ok), "{ok}");
            assert!(NodeName::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "A",
            "a_b",
            "a b",
            "system:node:a",
            "ä",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
            assert!(NodeName::new(bad).is_err(), "{bad}");
        }
        assert!(is_dns_label("kube-system"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_label(&"a".repeat(63)));
    }

    #[test]
    fn compares_and_derefs_as_a_str() {
        let node = NodeName::new("edge-1").unwrap();
        assert_eq!(node, "edge-1");
        assert_eq!(node, *"edge-1");
        assert_eq!(node, "edge-1".to_owned());
        assert_ne!(node, "edge-2");
        assert_eq!(node.len(), 6);
        assert!(node.starts_with("edge"));
        let s: &str = &node;
        assert_eq!(s, "edge-1");
    }
}
