//! Kubernetes resource quantities (`500m`, `1.5`, `128Mi`, `1G`, `2e3`) turned into the numbers
//! the runtime takes: CPU in millicores, memory in bytes.

use crate::{Error, Result};

/// Parses a quantity into its value times `scale` (1000 for millicores, 1 for bytes), rounded
/// up as Kubernetes rounds. Refuses negative, non-finite and absurd values.
fn parse_scaled(text: &str, scale: f64) -> Result<i64> {
    let bad = || Error::Spec(format!("quantity {text:?} is not a Kubernetes quantity"));
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return Err(bad());
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let (number, suffix) = match suffix.strip_prefix(['e', 'E']) {
        // A decimal exponent (`2e3`): the whole text is a float.
        Some(exp)
            if !exp.is_empty()
                && exp
                    .trim_start_matches(['+', '-'])
                    .chars()
                    .all(|c| c.is_ascii_digit()) =>
        {
            (text, "")
        }
        _ => (number, suffix),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        _ => return Err(bad()),
    };
    let scaled = (value * multiplier * scale).ceil();
    if !scaled.is_finite() || scaled < 0.0 || scaled > i64::MAX as f64 / 2.0 {
        return Err(bad());
    }
    Ok(scaled as i64)
}

/// CPU in millicores (`500m` → 500, `2` → 2000).
pub fn millicores(text: &str) -> Result<i64> {
    parse_scaled(text, 1000.0)
}

/// A byte count (`128Mi` → 134217728).
pub fn bytes(text: &str) -> Result<i64> {
    parse_scaled(text, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_kubernetes_accepts() {
        assert_eq!(millicores("500m").unwrap(), 500);
        assert_eq!(millicores("2").unwrap(), 2000);
        assert_eq!(millicores("0.25").unwrap(), 250);
        assert_eq!(millicores("1e-1").unwrap(), 100);
        assert_eq!(bytes("128Mi").unwrap(), 128 << 20);
        assert_eq!(bytes("1G").unwrap(), 1_000_000_000);
        assert_eq!(bytes("2e3").unwrap(), 2000);
        assert_eq!(bytes("1.5Ki").unwrap(), 1536);
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for bad in ["", "abc", "1Zi", "-1", "1e400", "12 Mi", "NaN", "inf"] {
            assert!(bytes(bad).is_err(), "{bad:?} accepted");
        }
    }
}
