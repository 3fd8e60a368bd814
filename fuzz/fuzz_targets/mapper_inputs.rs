//! What a mapper takes from Device YAML files and from devices: the YAML loader, visitor
//! configs, and the decoders of register values, MQTT payloads and serial answer lines never
//! panic; a decoded value always has the property's type.
#![no_main]

use kubeedge_mapper::modbus::ModbusVisitor;
use kubeedge_mapper::mqtt_device::MqttVisitor;
use kubeedge_mapper::runtime::load_yaml_str;
use kubeedge_mapper::serial_line::SerialLineVisitor;
use kubeedge_mapper::PropertyType;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value as Json, json};

const TYPES: [PropertyType; 6] = [
    PropertyType::Int,
    PropertyType::Float,
    PropertyType::Double,
    PropertyType::String,
    PropertyType::Boolean,
    PropertyType::Bytes,
];

fn map(v: Json) -> Map<String, Json> {
    v.as_object().cloned().unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let ty = TYPES[usize::from(selector) % TYPES.len()];
    match selector / 32 {
        // Device and DeviceModel YAML.
        0 | 1 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                let _ = load_yaml_str("fuzz.yaml", text);
            }
        }
        // Registers read from a device, with the swaps and scale a visitor may ask for.
        2 | 3 => {
            let registers: Vec<u16> = rest.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
            let config = json!({"register": "HoldingRegister", "offset": 0, "limit": registers.len().clamp(1, 125),
                "isSwap": selector & 1 == 1, "isRegisterSwap": selector & 2 == 2, "scale": 0.5});
            if let Ok(visitor) = ModbusVisitor::from_config(ty, &map(config)) {
                if let Ok(value) = visitor.decode_registers(&registers) {
                    assert_eq!(value.property_type(), ty);
                }
                let bits: Vec<bool> = rest.iter().map(|b| b & 1 == 1).collect();
                let _ = visitor.decode_bits(&bits);
            }
        }
        // An MQTT device's payload, raw and through a JSON path.
        4 | 5 => {
            for config in [json!({"topic": "d/t"}), json!({"topic": "d/t", "jsonPath": "a.b[1].c"})] {
                if let Ok(visitor) = MqttVisitor::from_config(ty, &map(config)) {
                    if let Ok(value) = visitor.decode(rest) {
                        assert_eq!(value.property_type(), ty);
                    }
                }
            }
        }
        // A serial sensor's answer line, by regex and by field.
        _ => {
            for config in [
                json!({"request": "R\\r\\n", "regex": "T=([-0-9.a-z]+)"}),
                json!({"request": "R\\r\\n", "field": 1, "separator": ","}),
            ] {
                if let Ok(visitor) = SerialLineVisitor::from_config(ty, &map(config)) {
                    if let Ok(value) = visitor.decode(rest) {
                        assert_eq!(value.property_type(), ty);
                    }
                }
            }
        }
    }
});
