//! JSON output byte-compatible with Go's `encoding/json`.
//!
//! KubeEdge marshals every message with Go's encoder, which differs from `serde_json`'s compact
//! output in three ways that change the bytes on the wire:
//!
//! - `<`, `>` and `&` are escaped as `\u003c`, `\u003e` and `\u0026` (HTML-safe output), and the
//!   line and paragraph separators U+2028 and U+2029 as `\u2028` and `\u2029`;
//! - floats use exponent form only below `1e-6` or from `1e21` up, with a signed exponent
//!   (`1e+21`, `1e-7`);
//! - map keys are sorted (use a `BTreeMap` for maps; struct fields keep their declaration order).
//!
//! [`to_vec`] serialises any `Serialize` value with these rules, and [`write_str`] writes one JSON
//! string. Everything else (non-ASCII as raw UTF-8, `\n`, `\r`, `\t`, `\b`, `\f` short escapes,
//! other control characters as lowercase `\u00XX`) is what both encoders do.

use std::io;

use bytes::BufMut;
use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};

/// Serialises `value` to JSON bytes exactly as Go's `json.Marshal` would (see the module docs).
///
/// ```
/// let bytes = kubeedge_proto::go_json::to_vec(&"<b>x&y</b>").unwrap();
/// assert_eq!(bytes, br#""\u003cb\u003ex\u0026y\u003c/b\u003e""#);
/// ```
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> crate::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    to_writer(&mut out, value)?;
    Ok(out)
}

/// Serialises `value` into `writer` with Go's rules (see [`to_vec`]).
pub fn to_writer<W: io::Write, T: Serialize + ?Sized>(writer: W, value: &T) -> crate::Result<()> {
    let mut ser = Serializer::with_formatter(writer, GoFormatter);
    value.serialize(&mut ser)?;
    Ok(())
}

/// Writes `s` as a quoted JSON string with Go's escaping rules.
///
/// ```
/// let mut out = Vec::new();
/// kubeedge_proto::go_json::write_str(&mut out, "a\"b\n<\u{2028}é");
/// assert_eq!(out, "\"a\\\"b\\n\\u003c\\u2028é\"".as_bytes());
/// ```
pub fn write_str<B: BufMut>(out: &mut B, s: &str) {
    out.put_u8(b'"');
    write_str_body(out, s);
    out.put_u8(b'"');
}

/// A byte-class table: true for the control characters (invalid raw in a JSON string) and for
/// each byte of `extra`.
pub(crate) const fn controls_and(extra: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        table[extra[i] as usize] = true;
        i += 1;
    }
    table
}

/// Bytes that may need an escape: `"`, `\\`, control characters, `<`, `>`, `&`, and `0xE2`, the
/// first byte of U+2028 and U+2029.
const NEEDS_CARE: [bool; 256] = controls_and(b"\"\\<>&\xe2");

/// `\u00XX` for a control character, lowercase hex as Go writes it.
fn control_escape(b: u8) -> [u8; 6] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    [
        b'\\',
        b'u',
        b'0',
        b'0',
        HEX[usize::from(b >> 4)],
        HEX[usize::from(b & 0xf)],
    ]
}

/// Writes the escaped body of a JSON string (without the quotes).
fn write_str_body<B: BufMut>(out: &mut B, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    loop {
        // Runs of ordinary bytes are copied in one piece.
        while i < bytes.len() && !NEEDS_CARE[usize::from(bytes[i])] {
            i += 1;
        }
        let Some(&b) = bytes.get(i) else { break };
        let (escape, len): (&[u8], usize) = match b {
            b'"' => (b"\\\"", 1),
            b'\\' => (b"\\\\", 1),
            b'\n' => (b"\\n", 1),
            b'\r' => (b"\\r", 1),
            b'\t' => (b"\\t", 1),
            0x08 => (b"\\b", 1),
            0x0c => (b"\\f", 1),
            b'<' => (b"\\u003c", 1),
            b'>' => (b"\\u003e", 1),
            b'&' => (b"\\u0026", 1),
            0xe2 => match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(0x80), Some(0xa8)) => (b"\\u2028", 3),
                (Some(0x80), Some(0xa9)) => (b"\\u2029", 3),
                // Another character starting with 0xE2 (e.g. '✓'): copied as it is.
                _ => {
                    i += 1;
                    continue;
                }
            },
            _ => {
                // The remaining control characters.
                out.put_slice(&bytes[start..i]);
                out.put_slice(&control_escape(b));
                i += 1;
                start = i;
                continue;
            }
        };
        out.put_slice(&bytes[start..i]);
        out.put_slice(escape);
        i += len;
        start = i;
    }
    out.put_slice(&bytes[start..]);
}

/// A `serde_json` formatter that produces Go's bytes (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct GoFormatter;

impl Formatter for GoFormatter {
    fn write_string_fragment<W: io::Write + ?Sized>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        // serde_json has already escaped quotes, backslashes and control characters around this
        // fragment; what is left for us are the HTML characters and U+2028/U+2029.
        let mut buf = Vec::with_capacity(fragment.len() + 8);
        write_str_body(&mut buf, fragment);
        writer.write_all(&buf)
    }

    fn write_char_escape<W: io::Write + ?Sized>(
        &mut self,
        writer: &mut W,
        char_escape: CharEscape,
    ) -> io::Result<()> {
        // Identical to serde_json's default; spelled out so that the Go contract is visible here.
        let seq: &[u8] = match char_escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"\\/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(byte) => return writer.write_all(&control_escape(byte)),
        };
        writer.write_all(seq)
    }

    fn write_f64<W: io::Write + ?Sized>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        writer.write_all(format_go_float(value, false).as_bytes())
    }

    fn write_f32<W: io::Write + ?Sized>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        writer.write_all(format_go_float(f64::from(value), true).as_bytes())
    }
}

/// Formats a finite float as Go's `encoding/json` does (`strconv.FormatFloat` with `'f'` or `'e'`
/// and the shortest representation that round-trips).
fn format_go_float(value: f64, single: bool) -> String {
    let abs = value.abs();
    let (small, large) = if single {
        (1e-6_f32 as f64, 1e21_f32 as f64)
    } else {
        (1e-6, 1e21)
    };
    let use_exp = abs != 0.0 && (abs < small || abs >= large);
    let shortest = |v: f64, exp: bool| -> String {
        if single {
            // Shortest digits that round-trip through f32.
            let v = v as f32;
            if exp {
                format!("{v:e}")
            } else {
                format!("{v}")
            }
        } else if exp {
            format!("{v:e}")
        } else {
            format!("{v}")
        }
    };
    if !use_exp {
        return shortest(value, false);
    }
    // Rust prints `1e21` / `1.5e-7`; Go prints `1e+21` / `1.5e-07` and then trims the zero of a
    // two-digit negative exponent, giving `1.5e-7`. Only the `+` differs.
    let s = shortest(value, true);
    match s.find('e') {
        Some(pos) if !s[pos + 1..].starts_with('-') => format!("{}e+{}", &s[..pos], &s[pos + 1..]),
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_go() {
        let mut out = Vec::new();
        write_str(&mut out, "plain text payload <&> é\u{1}\u{7f}\u{2029}");
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "\"plain text payload \\u003c\\u0026\\u003e é\\u0001\u{7f}\\u2029\""
        );
    }

    #[test]
    fn formatter_matches_write_str() {
        for s in [
            "",
            "a",
            "<>&",
            "tab\there",
            "\u{2028}x\u{2028}",
            "日本 ✓",
            "\\\"/",
        ] {
            let mut direct = Vec::new();
            write_str(&mut direct, s);
            assert_eq!(to_vec(s).unwrap(), direct, "for {s:?}");
        }
    }

    #[test]
    fn floats_like_go() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (3.0, "3"),
            (-2.5, "-2.5"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e-7, "1.5e-7"),
            (1e-6, "0.000001"),
            (123456.789, "123456.789"),
            (-1e-10, "-1e-10"),
        ];
        for (v, want) in cases {
            assert_eq!(
                String::from_utf8(to_vec(v).unwrap()).unwrap(),
                *want,
                "for {v}"
            );
        }
        assert_eq!(String::from_utf8(to_vec(&0.1_f32).unwrap()).unwrap(), "0.1");
    }
}
