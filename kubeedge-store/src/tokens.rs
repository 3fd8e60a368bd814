//! Service-account tokens for pods: the request an edge sends, the key its answer is stored
//! under, and when a stored token must be renewed.
//!
//! A pod that mounts a `serviceAccountToken` (every pod a real API server admits has one in its
//! `kube-api-access-*` volume) needs a token the cloud asks the API server for (TokenRequest,
//! bound to the pod). KubeEdge's edge sends `query <ns>/serviceaccounttoken/<serviceaccount>`
//! with a `TokenRequest` as content; the cloud answers with the issued `TokenRequest` (its
//! `status.token` and `status.expirationTimestamp`). The edge stores the answer, serves it
//! while it is fresh (also offline, after restarts) and asks again at 80 % of its lifetime or
//! after 24 h, as the kubelet's token manager does.
//!
//! The stored row's key keeps KubeEdge's three-segment shape with everything that tells two
//! tokens apart in the name: `<ns>/serviceaccounttoken/<serviceaccount>.<pod uid>.<seconds>.<audience hash>`.
//!
//! ```
//! use kubeedge_store::tokens::{TokenSpec, IssuedToken};
//!
//! let spec = TokenSpec {
//!     namespace: "default".into(),
//!     service_account: "default".into(),
//!     pod_name: "web".into(),
//!     pod_uid: "u1".into(),
//!     audience: None,
//!     expiration_seconds: 3607,
//! };
//! let query = spec.query_message().unwrap();
//! assert_eq!(query.route.resource, "default/serviceaccounttoken/default");
//! assert_eq!(TokenSpec::of_request("default", "default", query.content.as_json()), Some(spec.clone()));
//! let answer = br#"{"spec":{"expirationSeconds":3607},"status":{"token":"t","expirationTimestamp":"2030-01-01T01:00:07Z"}}"#;
//! let token = IssuedToken::parse(answer).unwrap();
//! assert_eq!(token.token, "t");
//! assert!(!token.needs_refresh(kubeedge_proto::parse_rfc3339("2030-01-01T00:10:00Z").unwrap()));
//! assert!(token.needs_refresh(kubeedge_proto::parse_rfc3339("2030-01-01T00:50:00Z").unwrap()));
//! ```

use kubeedge_proto::{Content, Message, Operation, ResourceType, Source, parse_rfc3339};
use serde_json::{Value, json};

use crate::Result;

/// The resource type segment of token rows and requests.
pub const TOKEN_TYPE: &str = "serviceaccounttoken";

/// A token is renewed once this share of its lifetime has passed (the kubelet's 80 %).
const REFRESH_AT_PERCENT: i64 = 80;
/// ... or once it is older than this, whatever its lifetime (the kubelet's 24 h).
const MAX_AGE_SECONDS: i64 = 24 * 3600;
/// The longest token accepted from the cloud.
const MAX_TOKEN_LEN: usize = 64 * 1024;

/// What a pod's token is for: everything that makes two tokens different.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenSpec {
    /// The pod's namespace.
    pub namespace: String,
    /// The service account.
    pub service_account: String,
    /// The pod the token is bound to.
    pub pod_name: String,
    /// Its uid.
    pub pod_uid: String,
    /// The audience, if the projection names one (else the API server's own).
    pub audience: Option<String>,
    /// The lifetime asked for.
    pub expiration_seconds: i64,
}

impl TokenSpec {
    /// The `meta` key of this token's row.
    pub fn key(&self) -> String {
        format!(
            "{}/{TOKEN_TYPE}/{}.{}.{}.{:016x}",
            self.namespace,
            self.service_account,
            self.pod_uid,
            self.expiration_seconds,
            fnv1a(self.audience.as_deref().unwrap_or("").as_bytes())
        )
    }

    /// The pod uid in a token row's `key` (what [`key`](Self::key) wrote), if it is one.
    pub fn pod_uid_of_key(key: &str) -> Option<&str> {
        let (_, name) = key.rsplit_once(&format!("/{TOKEN_TYPE}/"))?;
        // `<serviceaccount>.<pod uid>.<seconds>.<hash>`: service accounts may hold dots, uids not.
        name.rsplit('.').nth(2).filter(|uid| !uid.is_empty())
    }

    /// The `TokenRequest` KubeEdge's edge sends (bound to the pod).
    pub fn request(&self) -> Value {
        json!({
            "metadata": {"creationTimestamp": null},
            "spec": {
                "audiences": self.audience.as_ref().map(|a| vec![a.clone()]),
                "expirationSeconds": self.expiration_seconds,
                "boundObjectRef": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "name": self.pod_name,
                    "uid": self.pod_uid,
                },
            },
            "status": {"token": "", "expirationTimestamp": null},
        })
    }

    /// `edged/meta query <ns>/serviceaccounttoken/<sa>` with the request as content.
    pub fn query_message(&self) -> Result<Message> {
        Ok(Message::new(
            Source::Edged,
            kubeedge_proto::Group::Meta,
            Operation::Query,
            format!("{}/{TOKEN_TYPE}/{}", self.namespace, self.service_account),
            Content::json(&self.request())?,
        ))
    }

    /// The spec of a token request for `<namespace>/serviceaccounttoken/<service_account>`
    /// with `content` (a `TokenRequest`); `None` when it is not one bound to a pod.
    pub fn of_request(namespace: &str, service_account: &str, content: &[u8]) -> Option<Self> {
        let request: Value = serde_json::from_slice(content).ok()?;
        let spec = &request["spec"];
        let bound = &spec["boundObjectRef"];
        if bound["kind"].as_str() != Some("Pod") {
            return None;
        }
        let audience = spec["audiences"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod_name: bound["name"].as_str()?.to_owned(),
            pod_uid: bound["uid"].as_str().filter(|u| !u.is_empty())?.to_owned(),
            audience,
            expiration_seconds: spec["expirationSeconds"].as_i64().unwrap_or(3600),
        })
    }

    /// The spec of the request `msg` carries (`query <ns>/serviceaccounttoken/<sa>`), if it is
    /// one.
    pub fn of_message(msg: &Message) -> Option<Self> {
        let kubeedge_proto::Resource::Object(obj) = msg.resource().ok()? else {
            return None;
        };
        if obj.resource_type != ResourceType::ServiceAccountToken {
            return None;
        }
        Self::of_request(
            obj.namespace.as_str(),
            obj.name.as_deref()?,
            &msg.content.data(),
        )
    }
}

/// A token the cloud issued, read from the stored `TokenRequest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedToken {
    /// `status.token`.
    pub token: String,
    /// `status.expirationTimestamp`, seconds since the epoch.
    pub expires: i64,
    /// When it was issued (expiry minus the lifetime), seconds since the epoch.
    pub issued: i64,
}

impl IssuedToken {
    /// Reads an issued `TokenRequest`; `None` without a token or an expiry.
    pub fn parse(json: &[u8]) -> Option<Self> {
        let answer: Value = serde_json::from_slice(json).ok()?;
        let token = answer["status"]["token"].as_str()?;
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return None;
        }
        let expires = parse_rfc3339(answer["status"]["expirationTimestamp"].as_str()?)?;
        let lifetime = answer["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
        Some(Self {
            token: token.to_owned(),
            expires,
            issued: expires - lifetime,
        })
    }

    /// Whether it must be renewed at `now` (seconds since the epoch): past 80 % of its
    /// lifetime, older than 24 h, or expired.
    pub fn needs_refresh(&self, now: i64) -> bool {
        let lifetime = (self.expires - self.issued).max(0);
        now >= self.issued + lifetime * REFRESH_AT_PERCENT / 100
            || now >= self.issued + MAX_AGE_SECONDS
            || now >= self.expires
    }

    /// Whether it may still be used at `now`.
    pub fn valid(&self, now: i64) -> bool {
        now < self.expires
    }
}

/// 64-bit FNV-1a: a stable, dependency-free fingerprint for key names.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(audience: Option<&str>) -> TokenSpec {
        TokenSpec {
            namespace: "ns".into(),
            service_account: "sa".into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
            audience: audience.map(str::to_owned),
            expiration_seconds: 600,
        }
    }

    #[test]
    fn keys_tell_audiences_apart_and_requests_round_trip() {
        assert_ne!(spec(None).key(), spec(Some("vault")).key());
        assert!(
            spec(None)
                .key()
                .starts_with("ns/serviceaccounttoken/sa.u.600.")
        );
        let msg = spec(Some("vault")).query_message().unwrap();
        assert_eq!(TokenSpec::of_message(&msg), Some(spec(Some("vault"))));
        // Not bound to a pod: not a pod token.
        let unbound = br#"{"spec":{"expirationSeconds":600}}"#;
        assert_eq!(TokenSpec::of_request("ns", "sa", unbound), None);
    }

    #[test]
    fn tokens_without_a_token_or_expiry_are_refused() {
        assert!(IssuedToken::parse(br#"{"status":{"token":""}}"#).is_none());
        assert!(IssuedToken::parse(br#"{"status":{"token":"t"}}"#).is_none());
        assert!(IssuedToken::parse(b"[]").is_none());
        let t = IssuedToken::parse(
            br#"{"spec":{"expirationSeconds":31536000},"status":{"token":"t","expirationTimestamp":"2031-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        // A year-long token is still renewed after a day.
        assert!(t.needs_refresh(t.issued + 24 * 3600));
        assert!(!t.needs_refresh(t.issued + 3600));
        assert!(t.valid(t.issued + 3600) && !t.valid(t.expires));
    }
}
