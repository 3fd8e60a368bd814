//! Reading KubeEdge `configData` maps: free-form JSON objects whose numbers sometimes arrive as
//! strings (DMI delivers some that way). Shared by the Modbus, MQTT device and serial line
//! drivers; every error names the key and what was wrong with it.

// Each driver uses some of these readers: with only some drivers built, the others have no caller.
#![cfg_attr(
    not(all(feature = "modbus", feature = "mqtt", feature = "serial")),
    allow(dead_code)
)]

use serde_json::{Map, Value as Json};

use crate::error::{Error, Result};

/// The first of `keys` present with a non-null value, with the spelling it was found under.
pub(crate) fn lookup<'a>(
    config: &'a Map<String, Json>,
    keys: &[&'static str],
) -> Option<(&'static str, &'a Json)> {
    keys.iter()
        .find_map(|&k| config.get(k).filter(|v| !v.is_null()).map(|v| (k, v)))
}

/// A string (a JSON number is taken as its text).
pub(crate) fn string(key: &str, v: &Json) -> Result<String> {
    match v {
        Json::String(s) => Ok(s.clone()),
        Json::Number(n) => Ok(n.to_string()),
        other => Err(Error::config(format!(
            "{key}: expected a string, got {other}"
        ))),
    }
}

/// The string under `key`, if it is there and not null (a JSON number is taken as its text).
pub(crate) fn optional_string(
    config: &Map<String, Json>,
    key: &'static str,
) -> Result<Option<String>> {
    lookup(config, &[key])
        .map(|(k, v)| string(k, v))
        .transpose()
}

/// An integer in `min..=max`, from a JSON integer, a float with no fraction, or a numeric
/// string.
pub(crate) fn integer(key: &str, v: &Json, min: i64, max: i64) -> Result<i64> {
    let n = match v {
        Json::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9e15)
                .map(|f| f as i64)
        }),
        Json::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(Error::config(format!(
            "{key} {n} is out of range {min}..={max}"
        ))),
        None => Err(Error::config(format!(
            "{key}: expected an integer, got {v}"
        ))),
    }
}

/// A number, from a JSON number or a numeric string.
pub(crate) fn float(key: &str, v: &Json) -> Result<f64> {
    let f = match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    f.ok_or_else(|| Error::config(format!("{key}: expected a number, got {v}")))
}

/// A boolean, from a JSON boolean or the string `true` or `false` in any case.
pub(crate) fn boolean(key: &str, v: &Json) -> Result<bool> {
    match v {
        Json::Bool(b) => Ok(*b),
        Json::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Json::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(Error::config(format!(
            "{key}: expected true or false, got {other}"
        ))),
    }
}

/// The object under `key`, if there is one (absent or null: `None`).
pub(crate) fn nested<'a>(
    config: &'a Map<String, Json>,
    key: &str,
) -> Result<Option<&'a Map<String, Json>>> {
    match config.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(m)) => Ok(Some(m)),
        Some(other) => Err(Error::config(format!(
            "{key}: expected an object, got {other}"
        ))),
    }
}

/// The map in a JSON object, for tests that write configData as `json!({...})`.
#[cfg(test)]
pub(crate) fn map(v: Json) -> Map<String, Json> {
    match v {
        Json::Object(m) => m,
        _ => unreachable!(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_may_be_strings_and_errors_name_the_key() {
        assert_eq!(integer("n", &json!(5), 0, 9).unwrap(), 5);
        assert_eq!(integer("n", &json!("7"), 0, 9).unwrap(), 7);
        assert_eq!(integer("n", &json!(3.0), 0, 9).unwrap(), 3);
        let err = integer("n", &json!(10), 0, 9).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: n 10 is out of range 0..=9"
        );
        let err = integer("n", &json!(1.5), 0, 9).unwrap_err();
        assert!(err.to_string().contains("n: expected an integer"), "{err}");
        assert_eq!(string("s", &json!(12)).unwrap(), "12");
        assert!(string("s", &json!([1])).is_err());
        let map = json!({"a": null, "b": 1}).as_object().unwrap().clone();
        assert_eq!(lookup(&map, &["a", "b"]), Some(("b", &json!(1))));
        assert_eq!(lookup(&map, &["c"]), None);
        assert_eq!(optional_string(&map, "b").unwrap().as_deref(), Some("1"));
        assert_eq!(optional_string(&map, "a").unwrap(), None);
    }

    #[test]
    fn floats_booleans_and_nested_objects() {
        assert_eq!(float("f", &json!(0.5)).unwrap(), 0.5);
        assert_eq!(float("f", &json!(" 2 ")).unwrap(), 2.0);
        let err = float("f", &json!(true)).unwrap_err();
        assert!(err.to_string().contains("f: expected a number"), "{err}");
        assert!(boolean("b", &json!(true)).unwrap());
        assert!(!boolean("b", &json!("FALSE")).unwrap());
        let err = boolean("b", &json!(1)).unwrap_err();
        assert!(
            err.to_string().contains("b: expected true or false"),
            "{err}"
        );
        let config = map(json!({"o": {"k": 1}, "n": null, "s": "x"}));
        assert_eq!(nested(&config, "o").unwrap(), Some(&map(json!({"k": 1}))));
        assert_eq!(nested(&config, "n").unwrap(), None);
        assert_eq!(nested(&config, "missing").unwrap(), None);
        let err = nested(&config, "s").unwrap_err();
        assert!(err.to_string().contains("s: expected an object"), "{err}");
    }
}
