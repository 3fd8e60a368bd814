//! Register and bit payloads to typed values and back, with KubeEdge's visitor semantics.
//!
//! KubeEdge's Modbus mapper (`mappers-go`: `mappers/modbus/device/twindata.go`,
//! `TransferData`) takes the bytes of the registers it read, big-endian, reverses the register
//! order when `isRegisterSwap` is set, swaps the bytes inside each register when `isSwap` is
//! set, then reads the bytes as the property type and multiplies numbers by `scale`. This
//! module does the same, and the exact inverse for writes.

use crate::driver::{PropertyType, Value};
use crate::error::{Error, Result};

use super::config::{MAX_WRITE_BITS, MAX_WRITE_REGISTERS, ModbusVisitor};

impl ModbusVisitor {
    /// Decodes the registers read for this visitor (holding or input registers; `limit` of
    /// them) as the property type.
    ///
    /// The registers' bytes, big-endian, have their register order reversed if
    /// `is_register_swap`, and the two bytes of each register swapped if `is_swap`. Then:
    ///
    /// | type | from | how |
    /// |---|---|---|
    /// | INT | 1, 2 or 4 registers | big-endian unsigned (two's complement with `signed`, and always for 4 registers), times `scale`, truncated toward zero as KubeEdge does |
    /// | FLOAT | 2 registers | IEEE 754 single, times `scale` |
    /// | DOUBLE | 4 registers | IEEE 754 double, times `scale` |
    /// | BOOLEAN | any | true if any bit is set (KubeEdge tests the first byte == 1, which reads a register holding 1 as false) |
    /// | STRING | any | the bytes as UTF-8 (invalid sequences replaced), trailing NUL padding removed |
    /// | BYTES | any | the bytes |
    pub fn decode_registers(&self, registers: &[u16]) -> Result<Value> {
        if registers.len() != usize::from(self.limit) {
            return Err(Error::bad_frame(format!(
                "{} registers for a visitor with limit {}",
                registers.len(),
                self.limit
            )));
        }
        let mut bytes: Vec<u8> = registers.iter().flat_map(|r| r.to_be_bytes()).collect();
        self.swap(&mut bytes);
        let t = self.property_type;
        match t {
            PropertyType::Int => {
                let raw: i128 = match (bytes.as_slice(), self.signed) {
                    (&[a, b], false) => u16::from_be_bytes([a, b]).into(),
                    (&[a, b], true) => i16::from_be_bytes([a, b]).into(),
                    (&[a, b, c, d], false) => u32::from_be_bytes([a, b, c, d]).into(),
                    (&[a, b, c, d], true) => i32::from_be_bytes([a, b, c, d]).into(),
                    (&[a, b, c, d, e, f, g, h], _) => {
                        i64::from_be_bytes([a, b, c, d, e, f, g, h]).into()
                    }
                    _ => return Err(self.bad_limit()),
                };
                self.scale_int(raw)
            }
            PropertyType::Float => match bytes.as_slice() {
                &[a, b, c, d] => {
                    let v = f32::from_be_bytes([a, b, c, d]);
                    Ok(Value::Float(if self.scale == 1.0 {
                        v
                    } else {
                        (f64::from(v) * self.scale) as f32
                    }))
                }
                _ => Err(self.bad_limit()),
            },
            PropertyType::Double => match <[u8; 8]>::try_from(bytes.as_slice()) {
                Ok(b) => Ok(Value::Double(f64::from_be_bytes(b) * self.scale)),
                Err(_) => Err(self.bad_limit()),
            },
            PropertyType::Boolean => Ok(Value::Boolean(bytes.iter().any(|&b| b != 0))),
            PropertyType::String => {
                let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                Ok(Value::String(
                    String::from_utf8_lossy(&bytes[..end]).into_owned(),
                ))
            }
            PropertyType::Bytes => Ok(Value::Bytes(bytes)),
            PropertyType::Stream => Err(Error::Unsupported(
                "STREAM properties cannot be read over Modbus".into(),
            )),
        }
    }

    /// Decodes the bits read for this visitor (coils or discrete inputs; `limit` of them,
    /// the first address first).
    ///
    /// BOOLEAN is the first bit; INT is the bits as an unsigned number, the first bit the least
    /// significant (for up to 8 bits this is the byte KubeEdge reads), times `scale`; BYTES
    /// are the bits packed eight to a byte, as on the wire.
    pub fn decode_bits(&self, bits: &[bool]) -> Result<Value> {
        if bits.len() != usize::from(self.limit) {
            return Err(Error::bad_frame(format!(
                "{} bits for a visitor with limit {}",
                bits.len(),
                self.limit
            )));
        }
        match self.property_type {
            PropertyType::Boolean => Ok(Value::Boolean(bits[0])),
            PropertyType::Int if bits.len() <= 64 => {
                let raw = bits
                    .iter()
                    .enumerate()
                    .fold(0u64, |n, (i, &b)| n | (u64::from(b) << i));
                self.scale_int(raw.into())
            }
            PropertyType::Bytes => Ok(Value::Bytes(pack_bits(bits))),
            t => Err(Error::Unsupported(format!(
                "{t} properties cannot be read from {} (limit {})",
                self.register, self.limit
            ))),
        }
    }

    /// Encodes a value for writing to this visitor's holding registers: the inverse of
    /// [`ModbusVisitor::decode_registers`]. Numbers are divided by `scale` (INT rounded to the
    /// nearest integer) and must fit the registers (`0..=65535` for one register, `-32768..=32767`
    /// with `signed`...); a STRING may be shorter than the registers and is NUL padded; BYTES
    /// must fill them exactly; BOOLEAN writes 1 or 0.
    ///
    /// KubeEdge's mapper writes `uint16(value)` to one register and ignores `scale`, limit and
    /// swaps on writes; this encoder keeps reads and writes symmetrical instead.
    pub fn encode_registers(&self, value: &Value) -> Result<Vec<u16>> {
        value.check_type(self.property_type)?;
        let width = usize::from(self.limit) * 2;
        let too_big =
            |reason: String| Error::mismatch(self.property_type, value.to_string(), reason);
        let mut bytes: Vec<u8> = match value {
            Value::Int(v) => {
                let raw = self.unscale_int(*v)?;
                let (min, max): (i128, i128) = match (self.limit, self.signed) {
                    (1, false) => (0, u16::MAX.into()),
                    (1, true) => (i16::MIN.into(), i16::MAX.into()),
                    (2, false) => (0, u32::MAX.into()),
                    (2, true) => (i32::MIN.into(), i32::MAX.into()),
                    (4, _) => (i64::MIN.into(), i64::MAX.into()),
                    _ => return Err(self.bad_limit()),
                };
                if !(min..=max).contains(&raw) {
                    return Err(too_big(format!(
                        "the raw value {raw} does not fit {} register(s) ({min}..={max})",
                        self.limit
                    )));
                }
                // Two's complement of the low `width` bytes.
                let all = (raw as i64).to_be_bytes();
                all[8 - width..].to_vec()
            }
            Value::Float(v) => {
                if self.limit != 2 {
                    return Err(self.bad_limit());
                }
                let raw = if self.scale == 1.0 {
                    *v
                } else {
                    (f64::from(*v) / self.scale) as f32
                };
                raw.to_be_bytes().to_vec()
            }
            Value::Double(v) => {
                if self.limit != 4 {
                    return Err(self.bad_limit());
                }
                (v / self.scale).to_be_bytes().to_vec()
            }
            Value::Boolean(b) => {
                let mut bytes = vec![0; width];
                bytes[width - 1] = u8::from(*b);
                bytes
            }
            Value::String(s) => {
                if s.len() > width {
                    return Err(too_big(format!(
                        "{} bytes do not fit {} register(s) ({width} bytes)",
                        s.len(),
                        self.limit
                    )));
                }
                let mut bytes = s.as_bytes().to_vec();
                bytes.resize(width, 0);
                bytes
            }
            Value::Bytes(b) => {
                if b.len() != width {
                    return Err(too_big(format!(
                        "{} bytes for {} register(s): exactly {width} bytes needed",
                        b.len(),
                        self.limit
                    )));
                }
                b.clone()
            }
        };
        if self.limit > MAX_WRITE_REGISTERS {
            return Err(Error::config(format!(
                "{} registers cannot be written at once (at most {MAX_WRITE_REGISTERS})",
                self.limit
            )));
        }
        self.swap(&mut bytes);
        Ok(bytes
            .chunks_exact(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect())
    }

    /// Encodes a value for writing to this visitor's coils: BOOLEAN is one coil (the first);
    /// INT is `limit` coils, the least significant bit first, and must fit them unsigned;
    /// BYTES are the coils packed eight to a byte and must cover `limit` coils exactly.
    pub fn encode_bits(&self, value: &Value) -> Result<Vec<bool>> {
        value.check_type(self.property_type)?;
        let limit = usize::from(self.limit);
        let bad = |reason: String| Error::mismatch(self.property_type, value.to_string(), reason);
        let bits = match value {
            Value::Boolean(b) => vec![*b],
            Value::Int(v) if limit <= 64 => {
                let raw = self.unscale_int(*v)?;
                let max = (1i128 << limit) - 1;
                if !(0..=max).contains(&raw) {
                    return Err(bad(format!(
                        "the raw value {raw} does not fit {limit} coil(s) (0..={max})"
                    )));
                }
                (0..limit).map(|i| (raw >> i) & 1 == 1).collect()
            }
            Value::Bytes(b) => {
                if b.len() != limit.div_ceil(8) {
                    return Err(bad(format!(
                        "{} bytes for {limit} coil(s): exactly {} bytes needed",
                        b.len(),
                        limit.div_ceil(8)
                    )));
                }
                (0..limit).map(|i| b[i / 8] >> (i % 8) & 1 == 1).collect()
            }
            _ => {
                return Err(Error::Unsupported(format!(
                    "{} properties cannot be written to {} (limit {})",
                    self.property_type, self.register, self.limit
                )));
            }
        };
        if bits.len() > usize::from(MAX_WRITE_BITS) {
            return Err(Error::config(format!(
                "{} coils cannot be written at once (at most {MAX_WRITE_BITS})",
                bits.len()
            )));
        }
        Ok(bits)
    }

    /// Register swap then byte swap: both are their own inverse and commute, so this is also
    /// the encoding step.
    fn swap(&self, bytes: &mut [u8]) {
        if self.is_register_swap {
            let n = bytes.len() / 2;
            for i in 0..n / 2 {
                let j = n - 1 - i;
                bytes.swap(2 * i, 2 * j);
                bytes.swap(2 * i + 1, 2 * j + 1);
            }
        }
        if self.is_swap {
            for pair in bytes.chunks_exact_mut(2) {
                pair.swap(0, 1);
            }
        }
    }

    fn scale_int(&self, raw: i128) -> Result<Value> {
        if self.scale == 1.0 {
            return i64::try_from(raw)
                .map(Value::Int)
                .map_err(|_| Error::mismatch(PropertyType::Int, raw.to_string(), "out of range"));
        }
        let scaled = (raw as f64 * self.scale).trunc();
        if scaled.is_finite() && scaled >= i64::MIN as f64 && scaled < i64::MAX as f64 {
            Ok(Value::Int(scaled as i64))
        } else {
            Err(Error::mismatch(
                PropertyType::Int,
                format!("{raw} * {}", self.scale),
                "the scaled value is out of the 64-bit integer range",
            ))
        }
    }

    fn unscale_int(&self, v: i64) -> Result<i128> {
        if self.scale == 1.0 {
            return Ok(v.into());
        }
        let raw = (v as f64 / self.scale).round();
        if raw.is_finite() && raw.abs() < 1.8e19 {
            Ok(raw as i128)
        } else {
            Err(Error::mismatch(
                PropertyType::Int,
                v.to_string(),
                format!("divided by scale {} it is out of range", self.scale),
            ))
        }
    }

    fn bad_limit(&self) -> Error {
        Error::config(format!(
            "a {} property cannot use limit {} on {}",
            self.property_type, self.limit, self.register
        ))
    }
}

/// Bits packed eight to a byte, the first bit in the least significant position.
pub(crate) fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut bytes = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        bytes[i / 8] |= u8::from(b) << (i % 8);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::RegisterType;
    use PropertyType as T;

    struct V {
        t: PropertyType,
        limit: u16,
        scale: f64,
        swap: bool,
        word_swap: bool,
        signed: bool,
    }

    fn v(t: PropertyType, limit: u16) -> V {
        V {
            t,
            limit,
            scale: 1.0,
            swap: false,
            word_swap: false,
            signed: false,
        }
    }

    impl V {
        fn scale(mut self, s: f64) -> Self {
            self.scale = s;
            self
        }
        fn swap(mut self) -> Self {
            self.swap = true;
            self
        }
        fn word_swap(mut self) -> Self {
            self.word_swap = true;
            self
        }
        fn signed(mut self) -> Self {
            self.signed = true;
            self
        }
        fn on(&self, register: RegisterType) -> ModbusVisitor {
            let mut m = ModbusVisitor::new(self.t, register, 0, self.limit).unwrap();
            m.scale = self.scale;
            m.is_swap = self.swap;
            m.is_register_swap = self.word_swap;
            m.signed = self.signed;
            m.validate().unwrap();
            m
        }
    }

    const F21_5: [u16; 2] = [0x41AC, 0x0000];

    /// Every swap combination of every type against known register contents; each row also
    /// checks that encoding the value gives the registers back (where the value is exact).
    #[test]
    fn registers_decode_and_encode_with_swaps_and_scale() {
        let d = 1234.5678f64.to_bits().to_be_bytes();
        let double_words = [
            u16::from_be_bytes([d[0], d[1]]),
            u16::from_be_bytes([d[2], d[3]]),
            u16::from_be_bytes([d[4], d[5]]),
            u16::from_be_bytes([d[6], d[7]]),
        ];
        let table: Vec<(V, Vec<u16>, Value, bool)> = vec![
            // (visitor, registers, value, value encodes back to the same registers)
            (v(T::Int, 1), vec![25], Value::Int(25), true),
            (v(T::Int, 1), vec![0xFFFB], Value::Int(65531), true),
            (v(T::Int, 1).signed(), vec![0xFFFB], Value::Int(-5), true),
            (v(T::Int, 1).swap(), vec![0x3412], Value::Int(0x1234), true),
            (
                v(T::Int, 1).word_swap(),
                vec![0x3412],
                Value::Int(0x3412),
                true,
            ),
            (
                v(T::Int, 2),
                vec![0x0001, 0x2345],
                Value::Int(0x12345),
                true,
            ),
            (
                v(T::Int, 2).word_swap(),
                vec![0x2345, 0x0001],
                Value::Int(0x12345),
                true,
            ),
            (
                v(T::Int, 2).swap(),
                vec![0x0100, 0x4523],
                Value::Int(0x12345),
                true,
            ),
            (
                v(T::Int, 2).swap().word_swap(),
                vec![0x4523, 0x0100],
                Value::Int(0x12345),
                true,
            ),
            (
                v(T::Int, 2),
                vec![0xFFFF, 0xFFFE],
                Value::Int(0xFFFF_FFFE),
                true,
            ),
            (
                v(T::Int, 2).signed(),
                vec![0xFFFF, 0xFFFE],
                Value::Int(-2),
                true,
            ),
            (
                v(T::Int, 4),
                vec![0x0102, 0x0304, 0x0506, 0x0708],
                Value::Int(0x0102030405060708),
                true,
            ),
            (
                v(T::Int, 4).word_swap(),
                vec![0x0102, 0x0304, 0x0506, 0x0708],
                Value::Int(0x0708050603040102),
                true,
            ),
            (
                v(T::Int, 4).swap(),
                vec![0x0102, 0x0304, 0x0506, 0x0708],
                Value::Int(0x0201040306050807),
                true,
            ),
            (v(T::Int, 4), vec![0xFFFF; 4], Value::Int(-1), true),
            // scale: KubeEdge multiplies and truncates toward zero for INT.
            (v(T::Int, 1).scale(0.1), vec![215], Value::Int(21), false),
            (v(T::Int, 1).scale(10.0), vec![215], Value::Int(2150), true),
            (v(T::Int, 1).scale(-1.0), vec![7], Value::Int(-7), true),
            (
                v(T::Int, 1).scale(0.1).signed(),
                vec![0xFF29],
                Value::Int(-21),
                false,
            ), // -215
            (v(T::Float, 2), F21_5.to_vec(), Value::Float(21.5), true),
            (
                v(T::Float, 2).word_swap(),
                vec![0x0000, 0x41AC],
                Value::Float(21.5),
                true,
            ),
            (
                v(T::Float, 2).swap(),
                vec![0xAC41, 0x0000],
                Value::Float(21.5),
                true,
            ),
            (
                v(T::Float, 2).swap().word_swap(),
                vec![0x0000, 0xAC41],
                Value::Float(21.5),
                true,
            ),
            (
                v(T::Float, 2).scale(2.0),
                F21_5.to_vec(),
                Value::Float(43.0),
                true,
            ),
            (
                v(T::Float, 2),
                vec![0xBFA0, 0x0000],
                Value::Float(-1.25),
                true,
            ),
            (
                v(T::Double, 4),
                double_words.to_vec(),
                Value::Double(1234.5678),
                true,
            ),
            (
                v(T::Double, 4).word_swap(),
                double_words.iter().rev().copied().collect(),
                Value::Double(1234.5678),
                true,
            ),
            (
                v(T::Double, 4).scale(0.5),
                double_words.to_vec(),
                Value::Double(617.2839),
                true,
            ),
            (v(T::Boolean, 1), vec![0], Value::Boolean(false), true),
            (v(T::Boolean, 1), vec![1], Value::Boolean(true), true),
            (v(T::Boolean, 1), vec![0x0100], Value::Boolean(true), false),
            (v(T::Boolean, 2), vec![0, 1], Value::Boolean(true), true),
            (
                v(T::Boolean, 2).swap(),
                vec![0, 0x0100],
                Value::Boolean(true),
                true,
            ),
            (
                v(T::String, 4),
                vec![0x4B75, 0x6245, 0x6467, 0x6500],
                Value::String("KubEdge".into()),
                true,
            ),
            (
                v(T::String, 2).swap(),
                vec![0x754B, 0x6562],
                Value::String("Kube".into()),
                true,
            ),
            (
                v(T::String, 2).word_swap(),
                vec![0x6265, 0x4B75],
                Value::String("Kube".into()),
                true,
            ),
            (
                v(T::String, 2),
                vec![0x4869, 0x0000],
                Value::String("Hi".into()),
                true,
            ),
            (
                v(T::String, 2),
                vec![0, 0],
                Value::String(String::new()),
                true,
            ),
            (
                v(T::String, 1),
                vec![0xFF41],
                Value::String("\u{FFFD}A".into()),
                false,
            ),
            (
                v(T::Bytes, 2),
                vec![0x0102, 0x0304],
                Value::Bytes(vec![1, 2, 3, 4]),
                true,
            ),
            (
                v(T::Bytes, 2).swap(),
                vec![0x0102, 0x0304],
                Value::Bytes(vec![2, 1, 4, 3]),
                true,
            ),
            (
                v(T::Bytes, 2).word_swap(),
                vec![0x0102, 0x0304],
                Value::Bytes(vec![3, 4, 1, 2]),
                true,
            ),
        ];
        for register in [RegisterType::Holding, RegisterType::Input] {
            for (spec, regs, value, symmetric) in &table {
                let visitor = spec.on(register);
                let got = visitor.decode_registers(regs).unwrap();
                assert_eq!(&got, value, "{visitor:?} {regs:04X?}");
                if *symmetric {
                    let back = visitor.encode_registers(value).unwrap();
                    assert_eq!(&back, regs, "{visitor:?} {value:?}");
                }
            }
        }
    }

    #[test]
    fn register_values_that_do_not_fit_are_type_mismatches() {
        let cases: Vec<(V, Value, &str)> = vec![
            (
                v(T::Int, 1),
                Value::Int(70_000),
                "does not fit 1 register(s) (0..=65535)",
            ),
            (
                v(T::Int, 1),
                Value::Int(-1),
                "does not fit 1 register(s) (0..=65535)",
            ),
            (
                v(T::Int, 1).signed(),
                Value::Int(40_000),
                "(-32768..=32767)",
            ),
            (v(T::Int, 2), Value::Int(1 << 32), "(0..=4294967295)"),
            (v(T::Int, 1).scale(0.1), Value::Int(7000), "raw value 70000"),
            (
                v(T::String, 1),
                Value::String("abc".into()),
                "3 bytes do not fit 1 register(s)",
            ),
            (
                v(T::Bytes, 2),
                Value::Bytes(vec![1, 2, 3]),
                "exactly 4 bytes needed",
            ),
            (v(T::Int, 1), Value::Float(1.0), "it is a FLOAT value"),
            (v(T::Float, 2), Value::Double(1.0), "it is a DOUBLE value"),
            (v(T::Boolean, 1), Value::Int(1), "it is a INT value"),
            (v(T::String, 2), Value::Bytes(vec![]), "it is a BYTES value"),
        ];
        for (spec, value, want) in cases {
            let visitor = spec.on(RegisterType::Holding);
            let err = visitor.encode_registers(&value).unwrap_err();
            assert!(
                matches!(err, Error::TypeMismatch { .. }),
                "{value:?}: {err}"
            );
            assert!(err.to_string().contains(want), "{value:?}: {err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn bits_decode_and_encode() {
        let bits = [true, false, true, true, false, false, false, false, true];
        let table: Vec<(V, &[bool], Value, bool)> = vec![
            (v(T::Boolean, 1), &bits[..1], Value::Boolean(true), true),
            (v(T::Boolean, 1), &bits[1..2], Value::Boolean(false), true),
            (v(T::Boolean, 3), &bits[..3], Value::Boolean(true), false),
            (v(T::Int, 1), &bits[..1], Value::Int(1), true),
            (v(T::Int, 4), &bits[..4], Value::Int(0b1101), true),
            (v(T::Int, 9), &bits, Value::Int(0b1_0000_1101), true),
            (v(T::Int, 4).scale(2.0), &bits[..4], Value::Int(26), true),
            (v(T::Bytes, 9), &bits, Value::Bytes(vec![0x0D, 0x01]), true),
            (v(T::Bytes, 4), &bits[..4], Value::Bytes(vec![0x0D]), true),
        ];
        for register in [RegisterType::Coil, RegisterType::DiscreteInput] {
            for (spec, raw, value, symmetric) in &table {
                let visitor = spec.on(register);
                assert_eq!(&visitor.decode_bits(raw).unwrap(), value, "{visitor:?}");
                if *symmetric {
                    assert_eq!(visitor.encode_bits(value).unwrap(), *raw, "{visitor:?}");
                }
            }
        }
        // BOOLEAN writes only the first coil whatever the limit.
        let visitor = v(T::Boolean, 3).on(RegisterType::Coil);
        assert_eq!(
            visitor.encode_bits(&Value::Boolean(false)).unwrap(),
            [false]
        );
    }

    #[test]
    fn bit_values_that_do_not_fit() {
        let cases: Vec<(V, Value, &str)> = vec![
            (
                v(T::Int, 1),
                Value::Int(2),
                "does not fit 1 coil(s) (0..=1)",
            ),
            (v(T::Int, 4), Value::Int(-1), "(0..=15)"),
            (
                v(T::Bytes, 9),
                Value::Bytes(vec![1]),
                "exactly 2 bytes needed",
            ),
            (
                v(T::Boolean, 1),
                Value::String("true".into()),
                "it is a STRING value",
            ),
        ];
        for (spec, value, want) in cases {
            let err = spec.on(RegisterType::Coil).encode_bits(&value).unwrap_err();
            assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
            assert!(err.to_string().contains(want), "{err}");
        }
    }

    #[test]
    fn payloads_of_the_wrong_size_are_errors_not_panics() {
        let visitor = v(T::Float, 2).on(RegisterType::Holding);
        for regs in [&[][..], &[1][..], &[1, 2, 3][..]] {
            let err = visitor.decode_registers(regs).unwrap_err();
            assert!(matches!(err, Error::BadFrame { .. }), "{err}");
        }
        let visitor = v(T::Boolean, 2).on(RegisterType::Coil);
        assert!(visitor.decode_bits(&[]).is_err());
        assert!(visitor.decode_bits(&[true; 3]).is_err());
        // A visitor assembled by hand with a limit its type cannot use fails cleanly too.
        let mut odd = v(T::Int, 1).on(RegisterType::Holding);
        odd.limit = 3;
        assert!(matches!(
            odd.decode_registers(&[1, 2, 3]),
            Err(Error::Config(_))
        ));
        assert!(matches!(
            odd.encode_registers(&Value::Int(1)),
            Err(Error::Config(_))
        ));
        let mut wide = v(T::Bytes, 1).on(RegisterType::Holding);
        wide.limit = 124;
        assert!(matches!(
            wide.encode_registers(&Value::Bytes(vec![0; 248])),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn scale_overflow_is_an_error() {
        let visitor = v(T::Int, 4).scale(1e300).on(RegisterType::Holding);
        let err = visitor.decode_registers(&[0, 0, 0, 2]).unwrap_err();
        assert!(matches!(err, Error::TypeMismatch { .. }), "{err}");
        let visitor = v(T::Int, 4).scale(1e-300).on(RegisterType::Holding);
        assert!(visitor.encode_registers(&Value::Int(5)).is_err());
    }
}
