//! Typed resource paths: the `route.resource` strings of KubeEdge messages.
//!
//! | form | example | type |
//! |---|---|---|
//! | edge object | `default/pod/nginx`, `null/node/edge1`, `default/configmap` (list query) | [`Resource::Object`] |
//! | cloud object | `node/edge1/default/pod/nginx` | [`CloudResource`] |
//! | keepalive target | `node` | [`Resource::Node`] |
//! | membership | `membership`, `membership/detail` | [`Resource::Membership`], [`Resource::MembershipDetail`] |
//! | twin confirm | `twin` | [`Resource::Twin`] |
//! | device event | `device/default/thermo/twin/edge_updated`, `.../state/update` | [`Resource::Device`] |
//! | upload / eventbus topic | `$hw/events/upload/x`, `app1/user/hello` | [`Resource::Topic`] |
//!
//! Cluster-scoped objects use the literal namespace `null`. Parsing checks every segment
//! (namespace as a DNS label, names as Kubernetes path segments) and the total length.

use std::fmt;
use std::str::FromStr;

use crate::names::{Group, Operation, ResourceType};
use crate::{Error, Message, Result};

/// The longest structured resource path accepted (a topic may be longer: [`MAX_TOPIC_LEN`]).
pub const MAX_RESOURCE_LEN: usize = 1024;

/// The longest MQTT topic accepted as a resource (MQTT's own limit).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// The longest Kubernetes object name (a DNS subdomain).
const MAX_NAME_LEN: usize = 253;

/// The longest Kubernetes namespace (a DNS label).
const MAX_NAMESPACE_LEN: usize = 63;

/// The namespace segment of an object path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Namespace {
    /// A cluster-scoped object: the literal `null` on the wire.
    Cluster,
    /// A namespace name (a DNS label).
    Named(String),
}

impl Namespace {
    /// The wire string (`null` for [`Cluster`](Self::Cluster)).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Cluster => "null",
            Self::Named(ns) => ns,
        }
    }

    fn parse(s: &str, whole: &str) -> Result<Self> {
        if s == "null" {
            return Ok(Self::Cluster);
        }
        check_dns_label(s, whole)?;
        Ok(Self::Named(s.to_owned()))
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes object (or, without a name, a list of them) as addressed from the edge:
/// `<namespace>/<type>[/<name>]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectRef {
    /// The namespace, or [`Namespace::Cluster`].
    pub namespace: Namespace,
    /// The resource type (`pod`, `configmap`, `nodepatch`, ...).
    pub resource_type: ResourceType,
    /// The object name; `None` for a list query (`default/pod`).
    pub name: Option<String>,
}

impl ObjectRef {
    /// A namespaced object, checking every segment.
    pub fn new(
        namespace: &str,
        resource_type: impl Into<ResourceType>,
        name: &str,
    ) -> Result<Self> {
        let resource_type = resource_type.into();
        let whole = format!("{namespace}/{resource_type}/{name}");
        check_resource_type(resource_type.as_str(), &whole)?;
        check_name(name, &whole)?;
        Ok(Self {
            namespace: Namespace::parse(namespace, &whole)?,
            resource_type,
            name: Some(name.to_owned()),
        })
    }
}

/// A device id: `<namespace>/<name>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    /// The Device's namespace.
    pub namespace: String,
    /// The Device's name.
    pub name: String,
}

impl DeviceId {
    /// A device id from its parts, checking both.
    pub fn new(namespace: &str, name: &str) -> Result<Self> {
        let whole = format!("{namespace}/{name}");
        check_dns_label(namespace, &whole)?;
        check_name(name, &whole)?;
        Ok(Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }
}

impl FromStr for DeviceId {
    type Err = Error;

    /// Parses `<namespace>/<name>`.
    fn from_str(s: &str) -> Result<Self> {
        check_len(s, MAX_RESOURCE_LEN)?;
        match s.split_once('/') {
            Some((ns, name)) => Self::new(ns, name),
            None => Err(Error::resource(s, "a device id is <namespace>/<name>")),
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a `device/<ns>/<name>/...` message reports to the cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceEvent {
    /// `twin/edge_updated`: the edge changed twins.
    TwinEdgeUpdated,
    /// `twin/cloud_updated`: legacy cloud-side twin sync.
    TwinCloudUpdated,
    /// `state/update`: the device state changed.
    StateUpdate,
}

impl DeviceEvent {
    /// The path suffix after the device id.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TwinEdgeUpdated => "twin/edge_updated",
            Self::TwinCloudUpdated => "twin/cloud_updated",
            Self::StateUpdate => "state/update",
        }
    }
}

/// A resource path as seen on the edge and on the cloud-edge link.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Resource {
    /// `<ns>/<type>[/<name>]`.
    Object(ObjectRef),
    /// `node`: the target of keepalives.
    Node,
    /// `node/connection`: edge-internal connect and disconnect events.
    NodeConnection,
    /// `membership`: device membership updates from the cloud.
    Membership,
    /// `membership/detail`: the edge's membership detail request.
    MembershipDetail,
    /// `twin`: twin confirms from the cloud.
    Twin,
    /// `device/<ns>/<name>/<event>`.
    Device {
        /// The device.
        id: DeviceId,
        /// What is reported.
        event: DeviceEvent,
    },
    /// `k8s/ca.crt`: the cluster CA request.
    CaCert,
    /// `watchapp/sync`: metaserver watch-set sync.
    WatchAppSync,
    /// `rule/<name>`.
    Rule(String),
    /// `ruleendpoint/<name>`.
    RuleEndpoint(String),
    /// `null`: metaserver's placeholder resource.
    Placeholder,
    /// `inventory`: what an edge store holds (kubeedge-rs; see [`crate::inventory`]).
    Inventory,
    /// An MQTT topic carried as the resource of uploads and eventbus messages, as is.
    Topic(String),
}

impl Resource {
    /// Parses a structured resource path (anything but a topic; see [`Resource::topic`]).
    ///
    /// ```
    /// use kubeedge_proto::{Namespace, Resource, ResourceType};
    ///
    /// let Resource::Object(obj) = Resource::parse("null/node/edge-1").unwrap() else { panic!() };
    /// assert_eq!(obj.namespace, Namespace::Cluster);
    /// assert_eq!(obj.resource_type, ResourceType::Node);
    /// assert!(Resource::parse("default//nginx").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self> {
        check_len(s, MAX_RESOURCE_LEN)?;
        match s {
            "node" => return Ok(Self::Node),
            "node/connection" => return Ok(Self::NodeConnection),
            "membership" => return Ok(Self::Membership),
            "membership/detail" => return Ok(Self::MembershipDetail),
            "twin" => return Ok(Self::Twin),
            "k8s/ca.crt" => return Ok(Self::CaCert),
            "watchapp/sync" => return Ok(Self::WatchAppSync),
            "null" => return Ok(Self::Placeholder),
            "inventory" => return Ok(Self::Inventory),
            "" => return Err(Error::resource(s, "empty resource")),
            _ => {}
        }
        let mut segs = [""; 6];
        let mut n = 0;
        for seg in s.split('/') {
            if n == segs.len() {
                return Err(Error::resource(s, "too many path segments"));
            }
            segs[n] = seg;
            n += 1;
        }
        match (n, segs[0]) {
            (5, "device") => {
                let event = match (segs[3], segs[4]) {
                    ("twin", "edge_updated") => DeviceEvent::TwinEdgeUpdated,
                    ("twin", "cloud_updated") => DeviceEvent::TwinCloudUpdated,
                    ("state", "update") => DeviceEvent::StateUpdate,
                    _ => return Err(Error::resource(s, "unknown device event")),
                };
                check_dns_label(segs[1], s)?;
                check_name(segs[2], s)?;
                let id = DeviceId {
                    namespace: segs[1].to_owned(),
                    name: segs[2].to_owned(),
                };
                Ok(Self::Device { id, event })
            }
            (2, "rule") => check_name(segs[1], s).map(|()| Self::Rule(segs[1].to_owned())),
            (2, "ruleendpoint") => {
                check_name(segs[1], s).map(|()| Self::RuleEndpoint(segs[1].to_owned()))
            }
            (2 | 3, _) => {
                let namespace = Namespace::parse(segs[0], s)?;
                check_resource_type(segs[1], s)?;
                let name = if n == 3 {
                    check_name(segs[2], s)?;
                    Some(segs[2].to_owned())
                } else {
                    None
                };
                Ok(Self::Object(ObjectRef {
                    namespace,
                    resource_type: ResourceType::from(segs[1]),
                    name,
                }))
            }
            _ => Err(Error::resource(s, "not a known resource shape")),
        }
    }

    /// A topic resource (uploads, eventbus publish and subscribe): any non-empty string up to
    /// [`MAX_TOPIC_LEN`] bytes without NUL.
    pub fn topic(s: &str) -> Result<Self> {
        check_len(s, MAX_TOPIC_LEN)?;
        if s.is_empty() {
            return Err(Error::resource(s, "empty topic"));
        }
        if s.contains('\0') {
            return Err(Error::resource(s, "topic contains NUL"));
        }
        Ok(Self::Topic(s.to_owned()))
    }

    /// The object, if this is an object path.
    pub fn as_object(&self) -> Option<&ObjectRef> {
        match self {
            Self::Object(obj) => Some(obj),
            _ => None,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Object(obj) => {
                write!(f, "{}/{}", obj.namespace, obj.resource_type)?;
                match &obj.name {
                    Some(name) => write!(f, "/{name}"),
                    None => Ok(()),
                }
            }
            Self::Node => f.write_str("node"),
            Self::NodeConnection => f.write_str("node/connection"),
            Self::Membership => f.write_str("membership"),
            Self::MembershipDetail => f.write_str("membership/detail"),
            Self::Twin => f.write_str("twin"),
            Self::Device { id, event } => write!(f, "device/{id}/{}", event.as_str()),
            Self::CaCert => f.write_str("k8s/ca.crt"),
            Self::WatchAppSync => f.write_str("watchapp/sync"),
            Self::Rule(name) => write!(f, "rule/{name}"),
            Self::RuleEndpoint(name) => write!(f, "ruleendpoint/{name}"),
            Self::Placeholder => f.write_str("null"),
            Self::Inventory => f.write_str("inventory"),
            Self::Topic(topic) => f.write_str(topic),
        }
    }
}

/// A resource path inside the cloud: `node/<nodeID>/<edge form>`.
///
/// CloudHub strips the `node/<id>/` prefix before writing to the edge and adds it back to
/// everything the edge sends up.
///
/// ```
/// use kubeedge_proto::{CloudResource, Resource};
///
/// let r = CloudResource::parse("node/edge-1/default/pod/nginx").unwrap();
/// assert_eq!(r.node_id, "edge-1");
/// assert_eq!(r.resource, Some(Resource::parse("default/pod/nginx").unwrap()));
/// assert_eq!(r.to_string(), "node/edge-1/default/pod/nginx");
/// assert_eq!(CloudResource::split("node/edge-1/membership").unwrap(), ("edge-1", "membership"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CloudResource {
    /// The node the message is for (or from).
    pub node_id: String,
    /// The resource as the edge sees it; `None` for `node/<id>` alone, the node itself (as in
    /// cloudhub's internal connect events).
    pub resource: Option<Resource>,
}

impl CloudResource {
    /// Splits `node/<id>/<rest>` into the node id and the edge-form rest without allocating;
    /// `node/<id>` alone gives an empty rest, and `node/<id>/` is an error.
    pub fn split(s: &str) -> Result<(&str, &str)> {
        check_len(s, MAX_TOPIC_LEN)?;
        let Some(tail) = s.strip_prefix("node/") else {
            return Err(Error::resource(s, "a cloud resource starts with node/<id>"));
        };
        let (node_id, rest) = match tail.split_once('/') {
            Some((_, "")) => return Err(Error::resource(s, "nothing after node/<id>/")),
            Some((node_id, rest)) => (node_id, rest),
            None => (tail, ""),
        };
        check_name(node_id, s)?;
        Ok((node_id, rest))
    }

    /// Parses a structured cloud resource (`node/<id>/<structured edge form>`).
    pub fn parse(s: &str) -> Result<Self> {
        Self::parse_with(s, Resource::parse)
    }

    /// Parses `node/<id>/<topic>`, the form cloudhub gives uploads.
    pub fn parse_topic(s: &str) -> Result<Self> {
        Self::parse_with(s, Resource::topic)
    }

    fn parse_with(s: &str, parse_rest: fn(&str) -> Result<Resource>) -> Result<Self> {
        let (node_id, rest) = Self::split(s)?;
        let resource = if rest.is_empty() {
            None
        } else {
            Some(parse_rest(rest)?)
        };
        Ok(Self {
            node_id: node_id.to_owned(),
            resource,
        })
    }

    /// The cloud form of an edge resource string: `node/<node_id>/<edge>`.
    pub fn prefix(node_id: &str, edge: &str) -> String {
        let mut out = String::with_capacity(6 + node_id.len() + edge.len());
        out.push_str("node/");
        out.push_str(node_id);
        out.push('/');
        out.push_str(edge);
        out
    }
}

impl fmt::Display for CloudResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resource {
            Some(resource) => write!(f, "node/{}/{resource}", self.node_id),
            None => write!(f, "node/{}", self.node_id),
        }
    }
}

impl Message {
    /// The typed resource of this message (edge form, as on the cloud-edge link).
    ///
    /// Uploads and `user`-group messages carry an MQTT topic; everything else is parsed as a
    /// structured path.
    pub fn resource(&self) -> Result<Resource> {
        if self.route.operation == Some(Operation::Upload) || self.route.group == Some(Group::User)
        {
            Resource::topic(&self.route.resource)
        } else {
            Resource::parse(&self.route.resource)
        }
    }
}

fn check_len(s: &str, max: usize) -> Result<()> {
    if s.len() > max {
        return Err(Error::TooLarge {
            what: "resource",
            len: s.len(),
            max,
        });
    }
    Ok(())
}

/// A DNS-1123 label: lowercase alphanumerics and `-`, starting and ending alphanumeric.
fn check_dns_label(s: &str, whole: &str) -> Result<()> {
    if crate::object_name::is_dns_label(s) {
        Ok(())
    } else {
        Err(Error::resource(whole, "namespace is not a DNS label"))
    }
}

/// A Kubernetes object name as a path segment: 1 to 253 printable ASCII characters without `/`,
/// `%` or spaces, and not `.` or `..`.
fn check_name(s: &str, whole: &str) -> Result<()> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(Error::resource(whole, "empty name segment"));
    }
    if b.len() > MAX_NAME_LEN {
        return Err(Error::resource(whole, "name longer than 253 bytes"));
    }
    if s == "." || s == ".." {
        return Err(Error::resource(whole, "name may not be . or .."));
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_graphic() && *c != b'/' && *c != b'%')
    {
        return Err(Error::resource(
            whole,
            "name has a character outside printable ASCII",
        ));
    }
    Ok(())
}

/// A resource type segment: 1 to 63 ASCII letters, digits, `_`, `.` or `-`.
fn check_resource_type(s: &str, whole: &str) -> Result<()> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= MAX_NAMESPACE_LEN
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::resource(whole, "invalid resource type"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_shape() {
        let cases = [
            "default/pod/nginx",
            "null/node/edge1",
            "kube-node-lease/lease/edge1",
            "default/configmap",
            "node",
            "node/connection",
            "membership",
            "membership/detail",
            "twin",
            "device/default/thermo-1/twin/edge_updated",
            "device/default/thermo-1/twin/cloud_updated",
            "device/default/thermo-1/state/update",
            "k8s/ca.crt",
            "watchapp/sync",
            "rule/r1",
            "ruleendpoint/e1",
            "null",
            "default/event/pod-demo.17a2b3c4d5e6f",
            "null/clusterrole/system:node",
        ];
        for s in cases {
            let r = Resource::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(r.to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed() {
        let long_name = format!("default/pod/{}", "a".repeat(254));
        let cases = [
            "",
            "/",
            "default/pod/",
            "default//x",
            "Default/pod/x",
            "-ns/pod/x",
            "default/pod/a b",
            "default/pod/..",
            "default/pod/x%2f",
            "default/po d/x",
            "a/b/c/d",
            "device/default/x/twin/nope",
            "device/Default/x/twin/edge_updated",
            "a/b/c/d/e/f/g",
            long_name.as_str(),
        ];
        for s in cases {
            assert!(Resource::parse(s).is_err(), "{s:?} parsed");
        }
        assert!(matches!(
            Resource::parse(&"a/".repeat(600)),
            Err(Error::TooLarge {
                what: "resource",
                ..
            })
        ));
    }

    #[test]
    fn cloud_form() {
        let r = CloudResource::parse("node/edge1/null/nodepatch/edge1").unwrap();
        assert_eq!(r.node_id, "edge1");
        assert_eq!(r.to_string(), "node/edge1/null/nodepatch/edge1");
        // Found by the resource_path fuzz target: `node/<id>` alone must print back as itself.
        let node = CloudResource::parse("node/ke-edge-test-twin").unwrap();
        assert_eq!(node.resource, None);
        assert_eq!(node.to_string(), "node/ke-edge-test-twin");
        let keepalive = CloudResource::parse("node/n1/node").unwrap();
        assert_eq!(keepalive.resource, Some(Resource::Node));
        assert_eq!(keepalive.to_string(), "node/n1/node");
        assert_eq!(
            CloudResource::parse("node/n1/twin").unwrap().resource,
            Some(Resource::Twin)
        );
        // edgecore's empty shutdown message becomes `node/<id>/` in cloudcore: an error.
        assert!(CloudResource::parse("node/ke-edge-test/").is_err());
        assert!(CloudResource::parse("default/pod/x").is_err());
        let up = CloudResource::parse_topic("node/n1/$hw/events/upload/x").unwrap();
        assert_eq!(
            up.resource,
            Some(Resource::Topic("$hw/events/upload/x".into()))
        );
        assert_eq!(
            CloudResource::prefix("n1", "membership"),
            "node/n1/membership"
        );
    }

    #[test]
    fn device_ids() {
        let id: DeviceId = "default/thermo-1".parse().unwrap();
        assert_eq!(id.to_string(), "default/thermo-1");
        assert!("default".parse::<DeviceId>().is_err());
        assert!("default/a/b".parse::<DeviceId>().is_err());
        assert!("/x".parse::<DeviceId>().is_err());
    }

    #[test]
    fn topics() {
        assert!(Resource::topic("").is_err());
        assert!(Resource::topic("a\0b").is_err());
        assert!(Resource::topic(&"t".repeat(MAX_TOPIC_LEN + 1)).is_err());
        assert_eq!(
            Resource::topic("app1/user/hello").unwrap().to_string(),
            "app1/user/hello"
        );
    }
}
