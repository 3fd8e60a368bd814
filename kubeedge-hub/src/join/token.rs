//! Bootstrap tokens: `<caHash>.<JWT>`, the JWT compact HS256 with only an `exp` claim, keyed with
//! the CA private key's DER (KubeEdge's `pkg/security/token`, golang-jwt v5).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use kubeedge_proto::NodeName;

use super::{CertificateAuthority, check_len};

type HmacSha256 = Hmac<Sha256>;

/// The JWT header golang-jwt writes for HS256 (its map's keys sorted by `encoding/json`).
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// The lowercase hex SHA-256 of a CA certificate's DER: the first part of a token (64
/// characters).
pub fn ca_hash(ca_der: &[u8]) -> String {
    let digest = Sha256::digest(ca_der);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// What a token is limited to, for [`Token::issue_with`]. The default, no limit, is KubeEdge's
/// token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenScope {
    /// Only this node may join with the token (`cloudcore gettoken --node N`).
    pub node: Option<NodeName>,
    /// The token joins once: the join server records it as spent
    /// (`cloudcore gettoken --single-use`).
    pub single_use: bool,
}

/// What a verified token allows ([`Token::verify_bearer`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    /// When the token expires (`exp`).
    pub expires: SystemTime,
    /// The only node the token is for (`node`), if it is limited to one.
    pub node: Option<NodeName>,
    /// The token's id (`jti`) if it is single-use: the join server spends it.
    pub single_use_id: Option<String>,
}

impl TokenClaims {
    /// Whether the token may join `node`: [`crate::Error::TokenWrongNode`] if it is for
    /// another node.
    pub fn check_node(&self, node: &NodeName) -> Result<(), crate::Error> {
        match &self.node {
            Some(token_node) if token_node != node => Err(crate::Error::TokenWrongNode {
                token_node: token_node.to_string(),
                node: node.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// Issuing and checking bootstrap tokens. Not a value: a namespace for the functions below.
///
/// A token is `<caHash>.<header>.<payload>.<signature>`: [`ca_hash`] of the CA certificate, then
/// a compact JWT (unpadded base64url parts) with header `{"alg":"HS256","typ":"JWT"}`, payload
/// `{"exp":<unix seconds>}` and an HMAC-SHA256 signature keyed with
/// [`CertificateAuthority::key_der`].
#[derive(Debug)]
pub enum Token {}

impl Token {
    /// The longest token (or JWT, or `Authorization` header) accepted; KubeEdge's are about
    /// 200 characters.
    pub const MAX_LEN: usize = 8 * 1024;

    /// KubeEdge's default `tokenRefreshDuration`: a new token every 12 hours.
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(12 * 60 * 60);

    /// The validity of a token issued every `refresh`: twice that, so that a token fetched at
    /// any moment is good for at least `refresh` (KubeEdge's rule).
    pub fn validity_for_refresh(refresh: Duration) -> Duration {
        refresh.saturating_mul(2)
    }

    /// Issues a token valid until `now + validity` (truncated to whole seconds, as golang-jwt
    /// does), good for any node and any number of joins, as KubeEdge's. KubeEdge's default
    /// validity is `Token::validity_for_refresh(Token::DEFAULT_REFRESH)`, 24 hours.
    pub fn issue(ca: &CertificateAuthority, validity: Duration, now: SystemTime) -> String {
        Self::sign(ca, validity, now, &TokenScope::default(), None)
    }

    /// Issues a token limited by `scope`: to one node (claim `node`), and to one join (claim
    /// `jti`, a random 128-bit id the join server records as spent). KubeEdge's cloudcore
    /// ignores the extra claims, so such a token still joins there as a plain one; `keadm join`
    /// and KubeEdge's edgecore carry it unchanged.
    pub fn issue_with(
        ca: &CertificateAuthority,
        validity: Duration,
        now: SystemTime,
        scope: &TokenScope,
    ) -> Result<String, crate::Error> {
        let id = if scope.single_use {
            let bytes: [u8; 16] = super::random_bytes()?;
            Some(bytes.iter().fold(String::with_capacity(32), |mut hex, b| {
                let _ = write!(hex, "{b:02x}");
                hex
            }))
        } else {
            None
        };
        Ok(Self::sign(ca, validity, now, scope, id.as_deref()))
    }

    fn sign(
        ca: &CertificateAuthority,
        validity: Duration,
        now: SystemTime,
        scope: &TokenScope,
        id: Option<&str>,
    ) -> String {
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let exp = since_epoch.saturating_add(validity).as_secs();
        // The keys in the order Go's encoding/json writes a map: sorted.
        let mut claims = Map::new();
        claims.insert("exp".to_owned(), Value::from(exp));
        if let Some(id) = id {
            claims.insert("jti".to_owned(), Value::from(id));
        }
        if let Some(node) = &scope.node {
            claims.insert("node".to_owned(), Value::from(node.as_str()));
        }
        let header = URL_SAFE_NO_PAD.encode(HEADER_JSON);
        let payload = URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string());
        let signing_input = format!("{header}.{payload}");
        let signature = hmac(ca.key_der())
            .chain_update(signing_input.as_bytes())
            .finalize()
            .into_bytes();
        format!(
            "{}.{signing_input}.{}",
            ca.ca_hash(),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    /// Checks a whole token on the cloud side: its CA hash is this CA's and its JWT verifies
    /// ([`verify_bearer`](Self::verify_bearer)).
    pub fn verify(
        token: &str,
        ca: &CertificateAuthority,
        now: SystemTime,
    ) -> Result<TokenClaims, crate::Error> {
        check_token_len(token.len())?;
        let (hash, jwt) = token
            .split_once('.')
            .ok_or(crate::Error::TokenMalformed("no CA hash"))?;
        if hash != ca.ca_hash() {
            return Err(crate::Error::TokenCaHashMismatch {
                expected: ca.ca_hash().to_owned(),
                found: hash.to_owned(),
            });
        }
        Self::verify_bearer(jwt, ca, now)
    }

    /// Checks the JWT an edge sends as its bearer token (the token without its CA hash), as
    /// KubeEdge's `token.Verify` with golang-jwt v5: three unpadded base64url parts; the header
    /// names HS256 (the only algorithm accepted); the HMAC-SHA256 with the CA key matches
    /// (compared in constant time); the payload is a JSON object whose `exp` has not come
    /// (`now < exp`) and whose `nbf`, if present, has.
    ///
    /// Stricter than golang-jwt: a token without `exp` is refused, and so are other HMAC
    /// algorithms and base64 with non-zero trailing bits. A `node` claim must be a node name
    /// and a `jti` claim 32 lower-case hex digits. Returns what the token allows
    /// ([`TokenClaims`]); checking them against the request is the caller's part.
    pub fn verify_bearer(
        jwt: &str,
        ca: &CertificateAuthority,
        now: SystemTime,
    ) -> Result<TokenClaims, crate::Error> {
        check_token_len(jwt.len())?;
        let mut parts = jwt.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(crate::Error::TokenMalformed(
                "a JWT has three dot-separated parts",
            ));
        };

        let header_json = decode("header", header)?;
        let header_map = json_object("header", &header_json)?;
        match header_map.get("alg") {
            Some(Value::String(alg)) if alg == "HS256" => {}
            Some(Value::String(alg)) => return Err(crate::Error::TokenAlgorithm(alg.clone())),
            Some(other) => return Err(crate::Error::TokenAlgorithm(other.to_string())),
            None => return Err(crate::Error::TokenAlgorithm(String::new())),
        }

        let signature = decode("signature", signature)?;
        let signing_input_len = header.len() + 1 + payload.len();
        hmac(ca.key_der())
            .chain_update(&jwt.as_bytes()[..signing_input_len])
            .verify_slice(&signature)
            .map_err(|_| crate::Error::TokenSignature)?;

        let payload_json = decode("payload", payload)?;
        let claims = json_object("payload", &payload_json)?;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let exp = claims.get("exp").ok_or(crate::Error::TokenMissingExpiry)?;
        let expires = numeric_date("exp", exp)?;
        if now >= expires {
            return Err(crate::Error::TokenExpired);
        }
        if let Some(nbf) = claims.get("nbf")
            && now < numeric_date("nbf", nbf)?
        {
            return Err(crate::Error::TokenNotYetValid);
        }
        let invalid = |reason: &str| crate::Error::TokenJson {
            part: "payload",
            reason: reason.to_owned(),
        };
        let node = match claims.get("node") {
            None => None,
            Some(Value::String(node)) => Some(
                NodeName::new(node.as_str())
                    .map_err(|_| invalid("claim node is not a node name"))?,
            ),
            Some(_) => return Err(invalid("claim node is not a string")),
        };
        let id = match claims.get("jti") {
            None => None,
            Some(Value::String(id))
                if id.len() == 32
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
            {
                Some(id.clone())
            }
            Some(_) => return Err(invalid("claim jti is not 32 lower-case hex digits")),
        };
        Ok(TokenClaims {
            expires: UNIX_EPOCH.checked_add(expires).unwrap_or(UNIX_EPOCH),
            node,
            single_use_id: id,
        })
    }

    /// Checks an `Authorization` header value, `Bearer <JWT>`, as CloudHub's `/edge.crt` does
    /// for a first certificate: two space-separated words, the second a JWT that
    /// [verifies](Self::verify_bearer). Unlike KubeEdge, the first word must be `Bearer` (in any
    /// case).
    pub fn verify_authorization_header(
        value: &str,
        ca: &CertificateAuthority,
        now: SystemTime,
    ) -> Result<TokenClaims, crate::Error> {
        check_token_len(value.len())?;
        if value.is_empty() {
            return Err(crate::Error::AuthorizationHeader("empty"));
        }
        let mut words = value.split(' ');
        let (Some(scheme), Some(jwt), None) = (words.next(), words.next(), words.next()) else {
            return Err(crate::Error::AuthorizationHeader(
                "expected two space-separated words",
            ));
        };
        if !scheme.eq_ignore_ascii_case("Bearer") {
            return Err(crate::Error::AuthorizationHeader(
                "the scheme is not Bearer",
            ));
        }
        Self::verify_bearer(jwt, ca, now)
    }

    /// The edge side (KubeEdge's `VerifyCAAndGetRealToken`): checks that `token` has four
    /// dot-separated parts and that its first part is the hash of `ca_der` (the CA certificate
    /// fetched from `/ca.crt`), and returns the rest, the JWT to send as bearer token.
    pub fn split_for_edge(token: &str, ca_der: &[u8]) -> Result<String, crate::Error> {
        check_token_len(token.len())?;
        if token.split('.').count() != 4 {
            return Err(crate::Error::TokenMalformed(
                "a token has four dot-separated parts",
            ));
        }
        let (hash, jwt) = token
            .split_once('.')
            .ok_or(crate::Error::TokenMalformed("no CA hash"))?;
        let expected = ca_hash(ca_der);
        if hash != expected {
            return Err(crate::Error::TokenCaHashMismatch {
                expected,
                found: hash.to_owned(),
            });
        }
        Ok(jwt.to_owned())
    }
}

fn check_token_len(len: usize) -> Result<(), crate::Error> {
    check_len("token", len, Token::MAX_LEN)
}

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed), so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length")
}

fn decode(part: &'static str, text: &str) -> Result<Vec<u8>, crate::Error> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| crate::Error::TokenBase64 { part })
}

fn json_object(part: &'static str, json: &[u8]) -> Result<Map<String, Value>, crate::Error> {
    serde_json::from_slice(json).map_err(|e| crate::Error::TokenJson {
        part,
        reason: e.to_string(),
    })
}

/// A JWT NumericDate (seconds since the epoch, integer or fraction) as a duration since the
/// epoch; dates before the epoch become the epoch.
fn numeric_date(claim: &'static str, value: &Value) -> Result<Duration, crate::Error> {
    let invalid = || crate::Error::TokenJson {
        part: "payload",
        reason: format!("claim {claim} is not a number"),
    };
    let Value::Number(n) = value else {
        return Err(invalid());
    };
    if let Some(secs) = n.as_u64() {
        return Ok(Duration::from_secs(secs));
    }
    if n.is_i64() {
        return Ok(Duration::ZERO);
    }
    let secs = n.as_f64().ok_or_else(invalid)?;
    if secs <= 0.0 {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}
