//! The MQTT device driver against a real mosquitto broker, with `mosquitto_pub` and
//! `mosquitto_sub` (mosquitto-clients) playing the device.

use std::future::Future;
use std::time::Duration;

use serde_json::json;

use kubeedge_mapper::mqtt_device::{MqttDeviceConfig, MqttDeviceDriver, MqttVisitor};
use kubeedge_mapper::{DeviceDriver, Error, PropertySpec, Value};
use kubeedge_testkit::{
    DEADLINE, Mosquitto, MosquittoSub, mosquitto_pub_ok, mosquitto_pub_retained, within,
};

/// A driver for a device on `broker`, configured as a Device's protocol configData would,
/// plus `extra` keys.
fn driver(broker: &Mosquitto, extra: serde_json::Value) -> MqttDeviceDriver {
    let mut config = json!({"broker": broker.url(), "qos": 1, "reconnectInterval": 100});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    MqttDeviceDriver::new(
        MqttDeviceConfig::from_protocol_config(config.as_object().unwrap())
            .unwrap_or_else(|e| panic!("{config}: {e}")),
    )
}

/// A property of type `property_type` with this visitor configData.
fn property(
    driver: &MqttDeviceDriver,
    property_type: &str,
    config_data: serde_json::Value,
) -> MqttVisitor {
    let spec = PropertySpec::from_json(
        "p",
        property_type,
        json!({"protocolName": "mqtt", "configData": config_data}),
    )
    .expect("a property spec");
    driver
        .parse_visitor(&spec)
        .unwrap_or_else(|e| panic!("{property_type} {spec:?}: {e}"))
}

/// Calls `attempt` every 50 ms until it returns `Some`, failing the test after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(what, async {
        loop {
            if let Some(v) = attempt().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Waits until a read of `visitor` gives something other than "no value yet" (the message
/// published last has arrived) and returns it.
async fn read_settled(driver: &MqttDeviceDriver, visitor: &MqttVisitor) -> Result<Value, Error> {
    eventually("a message to arrive", || async {
        match within("read", driver.read(visitor)).await {
            Err(Error::NoValue(_)) => None,
            other => Some(other),
        }
    })
    .await
}

/// Waits until a read of `visitor` returns `want`.
async fn read_until(driver: &MqttDeviceDriver, visitor: &MqttVisitor, want: &Value) {
    let mut last = None;
    let found = tokio::time::timeout(DEADLINE, async {
        loop {
            let got = driver.read(visitor).await;
            if got.as_ref().ok() == Some(want) {
                return;
            }
            last = Some(got);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(found.is_ok(), "never read {want:?}; last {last:?}");
}

#[tokio::test]
async fn reads_typed_values_that_the_device_publishes() {
    let broker = Mosquitto::start().await;
    let driver = driver(&broker, json!({"clientId": "reader"}));
    let state = "thermostat/7/state";
    let temp = property(
        &driver,
        "INT",
        json!({"topic": state, "jsonPath": "sensors.temp"}),
    );
    let humidity = property(
        &driver,
        "FLOAT",
        json!({"topic": state, "jsonPath": "data[0].v"}),
    );
    let pressure = property(
        &driver,
        "DOUBLE",
        json!({"topic": state, "jsonPath": "$.data[1].v"}),
    );
    let on = property(
        &driver,
        "BOOLEAN",
        json!({"topic": state, "jsonPath": "on"}),
    );
    let name = property(
        &driver,
        "STRING",
        json!({"topic": state, "jsonPath": "name"}),
    );
    let quoted_int = property(
        &driver,
        "INT",
        json!({"topic": state, "jsonPath": "['serial.no']"}),
    );
    let raw_float = property(&driver, "FLOAT", json!({"topic": "thermostat/7/raw/t"}));
    let raw_int = property(&driver, "INT", json!({"topic": "thermostat/7/raw/n"}));
    let raw_bool = property(&driver, "BOOLEAN", json!({"topic": "thermostat/7/raw/b"}));
    let raw_string = property(&driver, "STRING", json!({"topic": "thermostat/7/raw/s"}));
    let raw_bytes = property(&driver, "BYTES", json!({"topic": "thermostat/7/raw/x"}));

    within("connect", driver.connect()).await.unwrap();
    within("health", driver.health()).await.unwrap();
    // Nothing published yet: a clear, retryable error.
    let err = within("read", driver.read(&temp)).await.unwrap_err();
    assert!(matches!(err, Error::NoValue(_)), "{err}");
    assert!(err.is_retryable());
    assert!(err.to_string().contains(state), "{err}");

    let port = broker.port();
    mosquitto_pub_ok(
        port,
        state,
        br#"{"sensors": {"temp": 21}, "data": [{"v": 45.5}, {"v": 1013.25}], "on": true,
             "name": "boiler \"B\"", "serial.no": "4711"}"#,
    )
    .await;
    assert_eq!(read_settled(&driver, &temp).await.unwrap(), Value::Int(21));
    let read = |v: &MqttVisitor| {
        let (driver, v) = (driver.clone(), v.clone());
        async move { within("read", driver.read(&v)).await.unwrap() }
    };
    assert_eq!(read(&humidity).await, Value::Float(45.5));
    assert_eq!(read(&pressure).await, Value::Double(1013.25));
    assert_eq!(read(&on).await, Value::Boolean(true));
    assert_eq!(read(&name).await, Value::from("boiler \"B\""));
    assert_eq!(read(&quoted_int).await, Value::Int(4711));
    assert_eq!(read(&temp).await.to_twin_string(), "21");

    for (topic, payload, visitor, want) in [
        (
            "thermostat/7/raw/t",
            &b"21.5"[..],
            &raw_float,
            Value::Float(21.5),
        ),
        ("thermostat/7/raw/n", b"-7\n", &raw_int, Value::Int(-7)),
        (
            "thermostat/7/raw/b",
            b"false",
            &raw_bool,
            Value::Boolean(false),
        ),
        (
            "thermostat/7/raw/s",
            b" hello world ",
            &raw_string,
            Value::from(" hello world "),
        ),
        (
            "thermostat/7/raw/x",
            b"\x00\xff\x10",
            &raw_bytes,
            Value::Bytes(vec![0, 0xff, 0x10]),
        ),
    ] {
        mosquitto_pub_ok(port, topic, payload).await;
        assert_eq!(
            read_settled(&driver, visitor).await.unwrap(),
            want,
            "{topic}"
        );
    }

    // A newer message replaces the older one.
    mosquitto_pub_ok(
        port,
        state,
        br#"{"sensors": {"temp": 22}, "data": [], "on": false}"#,
    )
    .await;
    read_until(&driver, &temp, &Value::Int(22)).await;
    assert_eq!(read(&on).await, Value::Boolean(false));
    let err = within("read", driver.read(&humidity)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("no index 0 in the array of 0 at data"),
        "{err}"
    );

    // A retained message is there for a driver that subscribes later.
    mosquitto_pub_retained(port, "thermostat/7/retained", b"99").await;
    let late = self::driver(&broker, json!({}));
    let retained = property(&late, "INT", json!({"topic": "thermostat/7/retained"}));
    assert_eq!(
        read_settled(&late, &retained).await.unwrap(),
        Value::Int(99)
    );

    // maxAge: a value older than the property allows is not returned.
    let fresh = property(
        &driver,
        "INT",
        json!({"topic": state, "jsonPath": "sensors.temp", "maxAge": 1}),
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    let err = within("read", driver.read(&fresh)).await.unwrap_err();
    assert!(
        matches!(err, Error::NoValue(_)) && err.to_string().contains("over maxAge 1 ms"),
        "{err}"
    );
    assert!(err.is_retryable());
}

#[tokio::test]
async fn writes_arrive_on_the_command_topic() {
    let broker = Mosquitto::start().await;
    let port = broker.port();
    for qos in [0, 1, 2] {
        let driver = driver(&broker, json!({"qos": qos}));
        let set_point = property(
            &driver,
            "INT",
            json!({"topic": "boiler/state", "jsonPath": "setPoint",
                   "commandTopic": format!("boiler/set/{qos}"),
                   "commandTemplate": "{\"set\":{{value}}}"}),
        );
        let sub = MosquittoSub::start(port, &format!("boiler/set/{qos}"));
        let got = sub
            .receive_while(|| async {
                within("write", driver.write(&set_point, &Value::Int(30)))
                    .await
                    .unwrap_or_else(|e| panic!("QoS {qos}: {e}"));
            })
            .await;
        assert_eq!(got, br#"{"set":30}"#, "QoS {qos}");
    }

    let driver = driver(&broker, json!({}));
    // Raw: the value's twin text.
    let raw = property(&driver, "FLOAT", json!({"commandTopic": "boiler/raw"}));
    let got = MosquittoSub::start(port, "boiler/raw")
        .receive_while(|| async {
            within("write", driver.write(&raw, &Value::Float(19.5)))
                .await
                .unwrap();
        })
        .await;
    assert_eq!(got, b"19.5");
    // A string as a JSON literal.
    let label = property(
        &driver,
        "STRING",
        json!({"commandTopic": "boiler/label", "commandTemplate": "{\"label\":{{json}}}"}),
    );
    let got = MosquittoSub::start(port, "boiler/label")
        .receive_while(|| async {
            within("write", driver.write(&label, &Value::from("hall \"2\"")))
                .await
                .unwrap();
        })
        .await;
    assert_eq!(got, br#"{"label":"hall \"2\""}"#);

    // A read-only property, a write-only one, a value of the wrong type.
    let read_only = property(&driver, "INT", json!({"topic": "boiler/state"}));
    let err = within("write", driver.write(&read_only, &Value::Int(1)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Unsupported(_)) && err.to_string().contains("read-only"),
        "{err}"
    );
    let err = within("read", driver.read(&raw)).await.unwrap_err();
    assert!(
        matches!(err, Error::Unsupported(_)) && err.to_string().contains("write-only"),
        "{err}"
    );
    let err = within("write", driver.write(&raw, &Value::from("warm")))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn resubscribes_after_the_broker_restarts() {
    let mut broker = Mosquitto::start().await;
    let port = broker.port();
    let driver = driver(&broker, json!({"timeout": 2000}));
    let level = property(
        &driver,
        "INT",
        json!({"topic": "tank/level", "jsonPath": "level"}),
    );
    within("connect", driver.connect()).await.unwrap();
    mosquitto_pub_ok(port, "tank/level", br#"{"level": 1}"#).await;
    assert_eq!(read_settled(&driver, &level).await.unwrap(), Value::Int(1));

    broker.stop().await;
    // The outage shows: reads and health checks fail at once, retryably.
    let err = eventually("the driver to notice the outage", || async {
        within("health", driver.health()).await.err()
    })
    .await;
    assert!(err.is_retryable(), "{err}");
    let err = within("read", driver.read(&level)).await.unwrap_err();
    assert!(
        matches!(err, Error::ConnectionLost { .. } | Error::Connect { .. }),
        "{err}"
    );
    assert!(err.is_retryable());

    broker.restart().await;
    // The new broker knows nothing of the old subscriptions: the value arrives only if the
    // driver subscribed again. Publish until it does.
    let mut n = 2;
    eventually("a value published after the restart", || {
        n += 1;
        let (driver, level) = (driver.clone(), level.clone());
        async move {
            mosquitto_pub_ok(port, "tank/level", format!("{{\"level\": {n}}}").as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            matches!(driver.read(&level).await, Ok(Value::Int(v)) if v >= 3).then_some(())
        }
    })
    .await;
    within("health", driver.health()).await.unwrap();
    within("connect", driver.connect()).await.unwrap();
    // And a topic added after the restart is subscribed at once.
    let pressure = property(&driver, "INT", json!({"topic": "tank/pressure"}));
    within("connect", driver.connect()).await.unwrap();
    mosquitto_pub_ok(port, "tank/pressure", b"7").await;
    assert_eq!(
        read_settled(&driver, &pressure).await.unwrap(),
        Value::Int(7),
        "{}",
        broker.log()
    );
}

#[tokio::test]
async fn hostile_payloads_are_clear_errors_and_the_next_good_value_works() {
    let broker = Mosquitto::start().await;
    let port = broker.port();
    let driver = driver(&broker, json!({}));
    let topic = "meter/9/state";
    let power = property(
        &driver,
        "INT",
        json!({"topic": topic, "jsonPath": "power.w"}),
    );
    let raw = property(&driver, "INT", json!({"topic": "meter/9/raw"}));
    within("connect", driver.connect()).await.unwrap();

    let mut n = 0;
    let mut good = async |driver: &MqttDeviceDriver| {
        n += 1;
        mosquitto_pub_ok(
            port,
            topic,
            format!(r#"{{"power": {{"w": {n}}}}}"#).as_bytes(),
        )
        .await;
        read_until(driver, &power, &Value::Int(n)).await;
    };
    good(&driver).await;

    let huge = vec![b'7'; 1024 * 1024];
    let cases: [(&[u8], &str); 6] = [
        (b"not json {", "is not JSON"),
        (
            br#"{"power": {"w": "lots"}}"#,
            "does not fit property type INT",
        ),
        (br#"{"power": {"w": 1.5}}"#, "not a base-10 integer"),
        (
            br#"{"power": {"kw": 1}}"#,
            "no key \"w\" in the object at power",
        ),
        (br#"{"power": [1, 2]}"#, "power is an array, not an object"),
        (&huge, "was 1048576 bytes, over maxPayloadBytes 65536"),
    ];
    for (payload, want) in cases {
        mosquitto_pub_ok(port, topic, payload).await;
        let err = eventually(want, || async {
            match within("read", driver.read(&power)).await {
                Err(e) if e.to_string().contains(want) => Some(e),
                _ => None,
            }
        })
        .await;
        assert!(
            matches!(err, Error::BadFrame { .. } | Error::TypeMismatch { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(topic), "{err}");
        assert!(err.to_string().len() < 400, "a short error: {err}");
        // The connection survived, and the next good value works.
        within("health", driver.health()).await.unwrap();
        good(&driver).await;
    }

    // Raw payloads: not text, and text that is not the type.
    for (payload, want) in [
        (&b"\xff\xfe"[..], "not UTF-8 text"),
        (b"12 volts", "not a base-10 integer"),
    ] {
        mosquitto_pub_ok(port, "meter/9/raw", payload).await;
        let err = eventually(want, || async {
            match within("read", driver.read(&raw)).await {
                Err(e) if e.to_string().contains(want) => Some(e),
                _ => None,
            }
        })
        .await;
        assert!(!err.to_string().is_empty());
    }
    mosquitto_pub_ok(port, "meter/9/raw", b"12").await;
    read_until(&driver, &raw, &Value::Int(12)).await;

    // A packet over maxPacketBytes closes the connection (MQTT 3.1.1 cannot skip it); the
    // driver reconnects, subscribes again, and reads the next good value.
    // (A long reconnect interval keeps the outage observable.)
    let small = self::driver(
        &broker,
        json!({"maxPayloadBytes": 1024, "maxPacketBytes": 65536, "reconnectInterval": 3000}),
    );
    let small_power = property(
        &small,
        "INT",
        json!({"topic": topic, "jsonPath": "power.w"}),
    );
    within("connect", small.connect()).await.unwrap();
    mosquitto_pub_ok(port, topic, &huge).await;
    let err = eventually("the oversized packet to close the connection", || async {
        within("health", small.health()).await.err()
    })
    .await;
    assert!(
        matches!(err, Error::ConnectionLost { .. })
            && err.to_string().contains("over maxPacketBytes 65536"),
        "{err}"
    );
    assert!(err.is_retryable());
    let mut m = 1000;
    eventually("a good value after the oversized packet", || {
        m += 1;
        let (small, small_power) = (small.clone(), small_power.clone());
        async move {
            mosquitto_pub_ok(
                port,
                topic,
                format!(r#"{{"power": {{"w": {m}}}}}"#).as_bytes(),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            matches!(small.read(&small_power).await, Ok(Value::Int(v)) if v > 1000).then_some(())
        }
    })
    .await;
    // The first driver was not disturbed by any of it.
    good(&driver).await;
}
