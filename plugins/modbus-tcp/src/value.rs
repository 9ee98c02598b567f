//! Register values: how one or two 16-bit registers hold a number of a
//! given type, and back.

use serde::Deserialize;

/// The type a register (or a pair of registers) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    #[default]
    U16,
    I16,
    U32,
    I32,
    /// IEEE 754 single precision over two registers.
    F32,
}

/// For 32-bit types: which register holds the high 16 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WordOrder {
    /// High word first, at the lower address (the Modbus convention).
    #[default]
    Big,
    /// Low word first.
    Little,
}

impl DataType {
    /// Registers one value occupies.
    pub fn words(self) -> u16 {
        match self {
            Self::U16 | Self::I16 => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
        }
    }
}

fn join(words: &[u16], order: WordOrder) -> u32 {
    let (high, low) = match order {
        WordOrder::Big => (words[0], words[1]),
        WordOrder::Little => (words[1], words[0]),
    };
    (u32::from(high) << 16) | u32::from(low)
}

fn split(value: u32, order: WordOrder) -> Vec<u16> {
    let (high, low) = ((value >> 16) as u16, value as u16);
    match order {
        WordOrder::Big => vec![high, low],
        WordOrder::Little => vec![low, high],
    }
}

/// The number `words` hold, before scaling. `words` has `ty.words()` items.
pub fn decode(words: &[u16], ty: DataType, order: WordOrder) -> f64 {
    match ty {
        DataType::U16 => f64::from(words[0]),
        DataType::I16 => f64::from(words[0] as i16),
        DataType::U32 => f64::from(join(words, order)),
        DataType::I32 => f64::from(join(words, order) as i32),
        DataType::F32 => f64::from(f32::from_bits(join(words, order))),
    }
}

/// The registers that hold `raw` (already divided by the scale); integers
/// are rounded to the nearest, and must fit the type.
pub fn encode(raw: f64, ty: DataType, order: WordOrder) -> Result<Vec<u16>, String> {
    if !raw.is_finite() {
        return Err(format!("{raw} is not a finite number"));
    }
    let whole = raw.round();
    let fits = |low: f64, high: f64| {
        if (low..=high).contains(&whole) {
            Ok(whole)
        } else {
            Err(format!("{raw} does not fit a {ty:?} ({low} to {high})"))
        }
    };
    Ok(match ty {
        DataType::U16 => vec![fits(0.0, f64::from(u16::MAX))? as u16],
        DataType::I16 => vec![fits(f64::from(i16::MIN), f64::from(i16::MAX))? as i16 as u16],
        DataType::U32 => split(fits(0.0, f64::from(u32::MAX))? as u32, order),
        DataType::I32 => split(
            fits(f64::from(i32::MIN), f64::from(i32::MAX))? as i32 as u32,
            order,
        ),
        DataType::F32 => {
            let single = raw as f32;
            if single.is_infinite() {
                return Err(format!("{raw} does not fit an F32"));
            }
            split(single.to_bits(), order)
        }
    })
}

/// A scaled value with its float noise rounded off (`215 * 0.1` is
/// `21.5`, not `21.500000000000004`).
pub fn scaled(raw: f64, scale: f64) -> f64 {
    let value = raw * scale;
    let rounded = (value * 1e6).round() / 1e6;
    if rounded.is_finite() {
        rounded
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type decodes from its registers, in both word orders.
    #[test]
    fn decodes_each_type() {
        use DataType::*;
        use WordOrder::*;
        assert_eq!(decode(&[0xFFFB], U16, Big), 65_531.0);
        assert_eq!(decode(&[0xFFFB], I16, Big), -5.0);
        assert_eq!(decode(&[0x0001, 0x86A0], U32, Big), 100_000.0);
        assert_eq!(decode(&[0x86A0, 0x0001], U32, Little), 100_000.0);
        assert_eq!(decode(&[0xFFFE, 0x7960], I32, Big), -100_000.0);
        assert_eq!(decode(&[0x4060, 0x0000], F32, Big), 3.5);
        assert_eq!(decode(&[0x0000, 0x4060], F32, Little), 3.5);
    }

    /// Encoding inverts decoding for every type and order.
    #[test]
    fn encode_round_trips() {
        use DataType::*;
        for ty in [U16, I16, U32, I32, F32] {
            for order in [WordOrder::Big, WordOrder::Little] {
                let value = if matches!(ty, U16 | U32) {
                    1234.0
                } else {
                    -1234.5
                };
                let words = encode(value, ty, order).expect("fits");
                assert_eq!(words.len(), usize::from(ty.words()));
                let expected = if ty == F32 { value } else { value.round() };
                assert_eq!(decode(&words, ty, order), expected, "{ty:?} {order:?}");
            }
        }
    }

    /// A value outside the type's range is refused, not wrapped.
    #[test]
    fn out_of_range_is_refused() {
        assert!(encode(-1.0, DataType::U16, WordOrder::Big).is_err());
        assert!(encode(70_000.0, DataType::U16, WordOrder::Big).is_err());
        assert!(encode(40_000.0, DataType::I16, WordOrder::Big).is_err());
        assert!(encode(f64::NAN, DataType::F32, WordOrder::Big).is_err());
        assert!(encode(1e300, DataType::F32, WordOrder::Big).is_err());
    }

    /// Scaling does not show float noise.
    #[test]
    fn scaling_rounds_noise() {
        assert_eq!(scaled(215.0, 0.1), 21.5);
        assert_eq!(scaled(3.0, 0.1), 0.3);
        assert_eq!(scaled(-5.0, 1.0), -5.0);
    }
}
