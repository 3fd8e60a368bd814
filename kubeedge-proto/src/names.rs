//! Typed names used in a message route: operations, groups and module (source) names.
//!
//! Every enum keeps an `Other` variant so an unknown string from a newer KubeEdge, or from a
//! vendor module, survives a decode and re-encode unchanged. Equality, ordering and hashing go
//! through [`as_str`](Operation::as_str), so `Operation::from("insert") == Operation::Insert` and
//! an `Other` holding a known string is equal to the named variant.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! name_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $s:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* #[doc = concat!("`", $s, "`")] $variant, )*
            /// Any other string, kept as it was received.
            Other(Box<str>),
        }

        impl $name {
            /// Every named variant, in declaration order.
            pub const KNOWN: &'static [$name] = &[$($name::$variant),*];

            /// The wire string.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $s, )*
                    Self::Other(s) => s,
                }
            }

            /// Whether this is one of the named variants (not [`Other`](Self::Other)).
            pub fn is_known(&self) -> bool {
                !matches!(self, Self::Other(s) if !Self::KNOWN.iter().any(|k| k.as_str() == &**s))
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                match s {
                    $( $s => Self::$variant, )*
                    other => Self::Other(other.into()),
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                match Self::from(s.as_str()) {
                    Self::Other(_) => Self::Other(s.into_boxed_str()),
                    known => known,
                }
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.as_str() == other.as_str()
            }
        }

        impl Eq for $name {}

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl Hash for $name {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.as_str().hash(state)
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                self.as_str().cmp(other.as_str())
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                self.as_str()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                // A visitor instead of `String`: known names are matched without allocating.
                struct NameVisitor;
                impl Visitor<'_> for NameVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a string")
                    }

                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name::from(v))
                    }

                    fn visit_string<E: de::Error>(self, v: String) -> Result<$name, E> {
                        Ok($name::from(v))
                    }
                }
                deserializer.deserialize_str(NameVisitor)
            }
        }
    };
}

name_enum! {
    /// A message operation (`route.operation`).
    ///
    /// Sources: beehive's model, the edge message helpers, cloudhub's model, CSI, metaserver,
    /// task manager and viaduct control operations (kubeedge-compat.md §1.2).
    Operation {
        Insert = "insert",
        Delete = "delete",
        Query = "query",
        Update = "update",
        Patch = "patch",
        Upload = "upload",
        Response = "response",
        Error = "error",
        UnholdUpgrade = "unhold-upgrade",
        Connect = "connect",
        Subscribe = "subscribe",
        Unsubscribe = "unsubscribe",
        Message = "message",
        Publish = "publish",
        GetResult = "get_result",
        Keepalive = "keepalive",
        Start = "start",
        Stop = "stop",
        Get = "get",
        List = "list",
        Detail = "detail",
        Delta = "delta",
        Document = "document",
        Updated = "updated",
        Deleted = "deleted",
        Connected = "connected",
        Disconnected = "disconnected",
        CreateVolume = "createvolume",
        DeleteVolume = "deletevolume",
        ControllerPublishVolume = "controllerpublishvolume",
        ControllerUnpublishVolume = "controllerunpublishvolume",
        ApplicationResponse = "applicationResponse",
        Prepull = "prepull",
        Upgrade = "upgrade",
        UpdateNodeActionStatus = "UpdateNodeActionStatus",
        /// Viaduct control operation, answered with `ack` and never delivered.
        Config = "config",
        /// Viaduct control operation, answered with `ack` and never delivered.
        Ping = "ping",
        /// Viaduct control operation, answered with `ack` and never delivered.
        Pong = "pong",
    }
}

name_enum! {
    /// A message group (`route.group`): the beehive group a message is broadcast to, or the
    /// message class on the cloud-edge link.
    Group {
        Resource = "resource",
        Func = "func",
        User = "user",
        Twin = "twin",
        TaskManager = "taskmanager",
        Meta = "meta",
        Bus = "bus",
        Hub = "hub",
        Edged = "edged",
        EdgeStream = "edgestream",
        CloudHub = "cloudhub",
        EdgeController = "edgecontroller",
        PolicyController = "policycontroller",
        DeviceController = "devicecontroller",
        NodeUpgradeJobController = "nodeupgradejobcontroller",
        SyncController = "synccontroller",
        DynamicController = "dynamiccontroller",
        CloudStream = "cloudStream",
        Router = "router",
    }
}

name_enum! {
    /// The module that produced a message (`route.source`).
    ///
    /// Note that KubeEdge's edgehub module is called `websocket`, that MQTT traffic comes from
    /// `bus`, and that metamanager rewrites the source of device ACKs to `meta`.
    Source {
        Websocket = "websocket",
        Edged = "edged",
        EventBus = "eventbus",
        ServiceBus = "servicebus",
        EdgeStream = "edgestream",
        Twin = "twin",
        MetaManager = "metamanager",
        TaskManager = "taskmanager",
        Meta = "meta",
        Bus = "bus",
        EdgeHub = "edgehub",
        CloudHub = "cloudhub",
        EdgeController = "edgecontroller",
        DeviceController = "devicecontroller",
        SyncController = "synccontroller",
        DynamicController = "dynamiccontroller",
        PolicyController = "policycontroller",
        NodeUpgradeJobController = "nodeupgradejobcontroller",
        CloudStream = "cloudStream",
        Router = "router",
        RouterEventBus = "router_eventbus",
        RouterServiceBus = "router_servicebus",
        MetaServer = "metaserver",
    }
}

name_enum! {
    /// The type segment of a resource path (`<ns>/<type>/<name>`).
    ResourceType {
        Pod = "pod",
        Event = "event",
        ConfigMap = "configmap",
        ServiceAccountToken = "serviceaccounttoken",
        Secret = "secret",
        Node = "node",
        PodList = "podlist",
        PodStatus = "podstatus",
        PodPatch = "podpatch",
        NodeStatus = "nodestatus",
        NodePatch = "nodepatch",
        Rule = "rule",
        RuleEndpoint = "ruleendpoint",
        RuleStatus = "rulestatus",
        Lease = "lease",
        ServiceAccountAccess = "serviceaccountaccess",
        CertificateSigningRequest = "certificatesigningrequest",
        Service = "service",
        Endpoints = "endpoints",
        PersistentVolume = "persistentvolume",
        PersistentVolumeClaim = "persistentvolumeclaim",
        VolumeAttachment = "volumeattachment",
        Volume = "volume",
        Device = "device",
        DeviceModel = "devicemodel",
        DeviceMapper = "devicemapper",
        AuthInfo = "auth_info",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_other_compare_by_string() {
        assert_eq!(Operation::from("insert"), Operation::Insert);
        assert_eq!(Operation::Other("insert".into()), Operation::Insert);
        assert!(Operation::Other("insert".into()).is_known());
        assert!(!Operation::from("frobnicate").is_known());
        assert_eq!(Operation::from("frobnicate").as_str(), "frobnicate");
        assert_eq!(Source::from("websocket"), Source::Websocket);
        assert_eq!(Group::CloudStream.as_str(), "cloudStream");
    }

    #[test]
    fn every_known_name_round_trips() {
        for op in Operation::KNOWN {
            assert_eq!(&Operation::from(op.as_str()), op);
            assert!(!matches!(Operation::from(op.as_str()), Operation::Other(_)));
        }
        for g in Group::KNOWN {
            assert!(!matches!(Group::from(g.as_str()), Group::Other(_)));
        }
        for s in Source::KNOWN {
            assert!(!matches!(Source::from(s.as_str()), Source::Other(_)));
        }
        for t in ResourceType::KNOWN {
            assert!(!matches!(
                ResourceType::from(t.as_str()),
                ResourceType::Other(_)
            ));
        }
    }
}
