//! Reports to the twin: `twin/update` and `state/update` over MQTT, or DMI
//! `ReportDeviceStatus` and `ReportDeviceStates`; and the desired values in
//! `twin/update/delta`.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use kubeedge_proto::device::{DeviceState, DeviceStateUpdate};
use kubeedge_proto::twin::{DeviceTwinDelta, DeviceTwinUpdate, MsgTwin, TwinValue, TypeMetadata};
use kubeedge_proto::{DeviceId, dmi, go_json, new_message_id, now_millis};
use kubeedge_twin::dmi::grpc::device_manager_service_client::DeviceManagerServiceClient;
use kubeedge_twin::mqtt::MqttHandle;
use kubeedge_twin::topic::device_topic;
use tonic::transport::Channel;

use crate::driver::PropertyType;
use crate::error::{Error, Result};

/// The twin topic suffix a mapper reports values on.
pub(crate) const TWIN_UPDATE: &str = "twin/update";
/// The twin topic suffix desired values arrive on.
pub(crate) const TWIN_UPDATE_DELTA: &str = "twin/update/delta";
/// The topic suffix a mapper reports the device state on.
pub(crate) const STATE_UPDATE: &str = "state/update";

/// The twin `metadata.type` a property of `property_type` is reported with: the model's type
/// in lower case (KubeEdge's mapper framework: `strings.ToLower(DataType)`), except where
/// edgecore would refuse the whole update. Its twin accepts only `string`, `int`, `integer`,
/// `float` and `boolean` ("the value type is not allowed" otherwise), so `DOUBLE` is reported
/// as `float` (a 64-bit value either way: edgecore parses `float` twins as float64) and
/// `BYTES` (base64 text) and `STREAM` as `string`.
pub fn twin_value_type(property_type: PropertyType) -> &'static str {
    match property_type {
        PropertyType::Int => "int",
        PropertyType::Float | PropertyType::Double => "float",
        PropertyType::Boolean => "boolean",
        PropertyType::String | PropertyType::Bytes | PropertyType::Stream => "string",
    }
}

/// One property's value in a report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TwinReport {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) property_type: PropertyType,
    /// The desired value the device was given, for DMI's `observedDesired`.
    pub(crate) desired: Option<String>,
    /// When the value was read (ms since the epoch).
    pub(crate) timestamp: i64,
}

/// Where reports go.
#[derive(Clone, Debug)]
pub(crate) enum Reporter {
    /// MQTT topics on the edge's broker.
    Mqtt(MqttHandle),
    /// DMI calls on edgecore's socket.
    Dmi(DeviceManagerServiceClient<Channel>),
}

impl Reporter {
    /// Reports property values (one message for all of them), bounded by `timeout`.
    pub(crate) async fn twins(
        &self,
        id: &DeviceId,
        twins: &[TwinReport],
        timeout: Duration,
    ) -> Result<()> {
        match self {
            Self::Mqtt(mqtt) => {
                let topic = device_topic(id, TWIN_UPDATE);
                publish(mqtt, &topic, twin_update_payload(twins)?, timeout).await
            }
            Self::Dmi(client) => {
                let request = dmi::ReportDeviceStatusRequest {
                    device_name: id.name.clone(),
                    device_namespace: id.namespace.clone(),
                    reported_device: Some(dmi::DeviceStatus {
                        twins: twins.iter().map(dmi_twin).collect(),
                        report_to_cloud: true,
                        report_cycle: 0,
                    }),
                };
                let mut client = client.clone();
                let call = client.report_device_status(request);
                bounded("DMI ReportDeviceStatus", id, timeout, call).await
            }
        }
    }

    /// Reports the device's state (`online` / `offline`), bounded by `timeout`.
    pub(crate) async fn state(
        &self,
        id: &DeviceId,
        state: DeviceState,
        timeout: Duration,
    ) -> Result<()> {
        match self {
            Self::Mqtt(mqtt) => {
                let topic = device_topic(id, STATE_UPDATE);
                let payload = DeviceStateUpdate {
                    event_id: new_message_id(),
                    timestamp: now_millis(),
                    state: state.as_str().to_owned(),
                };
                let payload = go_json::to_vec(&payload)
                    .map_err(|e| Error::edge(format!("encoding the state of {id}"), e))?;
                publish(mqtt, &topic, Bytes::from(payload), timeout).await
            }
            Self::Dmi(client) => {
                let request = dmi::ReportDeviceStatesRequest {
                    device_name: id.name.clone(),
                    device_namespace: id.namespace.clone(),
                    state: state.as_str().to_owned(),
                };
                let mut client = client.clone();
                let call = client.report_device_states(request);
                bounded("DMI ReportDeviceStates", id, timeout, call).await
            }
        }
    }
}

async fn publish(mqtt: &MqttHandle, topic: &str, payload: Bytes, timeout: Duration) -> Result<()> {
    let operation = || format!("MQTT publish to {topic}");
    match tokio::time::timeout(timeout, mqtt.publish(topic, payload)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::edge(operation(), e)),
        Err(_) => Err(Error::edge(
            operation(),
            format!("the client's queue stayed full for {timeout:?}"),
        )),
    }
}

async fn bounded<T>(
    operation: &str,
    id: &DeviceId,
    timeout: Duration,
    call: impl Future<Output = std::result::Result<T, tonic::Status>>,
) -> Result<()> {
    let operation = || format!("{operation} for {id}");
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(Error::edge(
            operation(),
            format!("{:?}: {}", status.code(), status.message()),
        )),
        Err(_) => Err(Error::edge(
            operation(),
            format!("no answer within {timeout:?}"),
        )),
    }
}

/// `{"event_id","timestamp","twin":{"<prop>":{"actual":{"value":"25"},"metadata":{"type":"int"}}}}`
pub(crate) fn twin_update_payload(twins: &[TwinReport]) -> Result<Bytes> {
    let update = DeviceTwinUpdate {
        event_id: new_message_id(),
        timestamp: now_millis(),
        twin: twins
            .iter()
            .map(|t| {
                let twin = MsgTwin {
                    actual: Some(TwinValue {
                        value: Some(t.value.clone()),
                        metadata: None,
                    }),
                    metadata: Some(TypeMetadata {
                        value_type: twin_value_type(t.property_type).to_owned(),
                    }),
                    ..MsgTwin::default()
                };
                (t.name.clone(), Some(twin))
            })
            .collect(),
    };
    go_json::to_vec(&update)
        .map(Bytes::from)
        .map_err(|e| Error::edge("encoding a twin update", e))
}

/// A DMI twin as KubeEdge's mapper framework reports it: `reported` with the value and
/// `{"timestamp": <ms>, "type": <type>}`, `observedDesired` with the desired value the device
/// was given (edgecore turns it into the twin's `expected`), absent when there is none.
fn dmi_twin(t: &TwinReport) -> dmi::Twin {
    let value_type = twin_value_type(t.property_type).to_owned();
    dmi::Twin {
        property_name: t.name.clone(),
        reported: Some(dmi::TwinProperty {
            value: t.value.clone(),
            metadata: BTreeMap::from([
                ("timestamp".to_owned(), t.timestamp.to_string()),
                ("type".to_owned(), value_type.clone()),
            ])
            .into_iter()
            .collect(),
        }),
        observed_desired: t.desired.as_ref().map(|d| dmi::TwinProperty {
            value: d.clone(),
            metadata: BTreeMap::from([("type".to_owned(), value_type)])
                .into_iter()
                .collect(),
        }),
    }
}

/// The desired values of a `twin/update/delta` payload (`delta`: property -> expected value).
pub(crate) fn parse_delta(payload: &[u8]) -> Result<BTreeMap<String, String>> {
    if payload.len() > kubeedge_proto::twin::MAX_PAYLOAD_LEN {
        return Err(Error::edge(
            "reading a twin delta",
            format!("{} bytes is too large", payload.len()),
        ));
    }
    let delta: DeviceTwinDelta =
        serde_json::from_slice(payload).map_err(|e| Error::edge("reading a twin delta", e))?;
    Ok(delta.delta)
}

/// The device of a `$hw/events/device/<ns>/<name>/twin/update/delta` topic.
pub(crate) fn delta_device(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(kubeedge_twin::topic::DEVICE_PREFIX)?;
    let rest = rest.strip_suffix(TWIN_UPDATE_DELTA)?.strip_suffix('/')?;
    let (ns, name) = rest.split_once('/')?;
    (!name.contains('/')).then_some((ns, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twin_update_is_what_edgecore_expects() {
        let payload = twin_update_payload(&[TwinReport {
            name: "temperature".into(),
            value: "25".into(),
            property_type: PropertyType::Int,
            desired: None,
            timestamp: 1,
        }])
        .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            json["twin"],
            serde_json::json!({"temperature": {"actual": {"value": "25"}, "metadata": {"type": "int"}}})
        );
        assert!(json["event_id"].as_str().is_some_and(|s| s.len() == 36));
        assert!(json["timestamp"].as_i64().is_some_and(|t| t > 0));
        // And the edge's own parser accepts it.
        kubeedge_proto::twin::DeviceTwinUpdate::parse(&payload).unwrap();
    }

    #[test]
    fn every_type_is_one_edgecore_accepts() {
        for t in PropertyType::ALL {
            kubeedge_proto::twin::validate_value_type("1", twin_value_type(t))
                .or_else(|_| kubeedge_proto::twin::validate_value_type("true", twin_value_type(t)))
                .unwrap_or_else(|e| panic!("{t}: {e}"));
        }
    }

    #[test]
    fn delta_topics_and_payloads() {
        assert_eq!(
            delta_device("$hw/events/device/default/thermo-1/twin/update/delta"),
            Some(("default", "thermo-1"))
        );
        assert_eq!(
            delta_device("$hw/events/device/default/thermo-1/twin/update"),
            None
        );
        assert_eq!(
            delta_device("$hw/events/device/a/b/c/twin/update/delta"),
            None
        );
        let delta = parse_delta(
            br#"{"event_id":"e","timestamp":1,"twin":{"t":{"expected":{"value":"42"}}},"delta":{"t":"42"}}"#,
        )
        .unwrap();
        assert_eq!(delta["t"], "42");
        assert!(parse_delta(b"{not json").is_err());
    }
}
