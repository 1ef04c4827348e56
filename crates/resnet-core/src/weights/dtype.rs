//! Element types of stored tensors and their little-endian decoding, shared by the `.pth`
//! (torch storages) and safetensors readers: floating types become f32, integers i64.

use super::TensorValues;

/// Element types of torch storages (and of safetensors tensors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl ElementType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElementType::F64 | ElementType::I64 => 8,
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F16 | ElementType::BF16 | ElementType::I16 => 2,
            ElementType::I8 | ElementType::U8 | ElementType::Bool => 1,
        }
    }

    /// The element type of a torch typed-storage class (`torch.FloatStorage` → F32).
    pub fn from_torch_storage(class: &str) -> Option<ElementType> {
        Some(match class {
            "FloatStorage" => ElementType::F32,
            "HalfStorage" => ElementType::F16,
            "BFloat16Storage" => ElementType::BF16,
            "DoubleStorage" => ElementType::F64,
            "LongStorage" => ElementType::I64,
            "IntStorage" => ElementType::I32,
            "ShortStorage" => ElementType::I16,
            "CharStorage" => ElementType::I8,
            "ByteStorage" => ElementType::U8,
            "BoolStorage" => ElementType::Bool,
            _ => return None,
        })
    }

    /// Decodes little-endian elements: floating types become f32, integer types i64.
    /// Trailing bytes that do not fill a whole element are ignored (callers check lengths).
    pub fn decode_le(self, bytes: &[u8]) -> TensorValues {
        fn ints<const N: usize>(bytes: &[u8], f: fn([u8; N]) -> i64) -> TensorValues {
            let it = bytes.chunks_exact(N).map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            });
            TensorValues::I64(it.collect())
        }
        fn floats<const N: usize>(bytes: &[u8], f: fn([u8; N]) -> f32) -> TensorValues {
            let it = bytes.chunks_exact(N).map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                f(a)
            });
            TensorValues::F32(it.collect())
        }
        match self {
            ElementType::F32 => floats::<4>(bytes, f32::from_le_bytes),
            ElementType::F16 => floats::<2>(bytes, |b| f16_to_f32(u16::from_le_bytes(b))),
            ElementType::BF16 => floats::<2>(bytes, |b| bf16_to_f32(u16::from_le_bytes(b))),
            ElementType::F64 => floats::<8>(bytes, |b| f64::from_le_bytes(b) as f32),
            ElementType::I64 => ints::<8>(bytes, i64::from_le_bytes),
            ElementType::I32 => ints::<4>(bytes, |b| i32::from_le_bytes(b).into()),
            ElementType::I16 => ints::<2>(bytes, |b| i16::from_le_bytes(b).into()),
            ElementType::I8 => ints::<1>(bytes, |b| i8::from_le_bytes(b).into()),
            ElementType::U8 | ElementType::Bool => ints::<1>(bytes, |b| b[0].into()),
        }
    }
}

/// IEEE half precision to f32 (exact: every f16 is representable as f32).
fn f16_to_f32(h: u16) -> f32 {
    let negative = h & 0x8000 != 0;
    let exponent = u32::from((h >> 10) & 0x1f);
    let mantissa = u32::from(h & 0x3ff);
    let magnitude = match exponent {
        // Zero or subnormal: mantissa * 2^-24, exact in f32.
        0 => mantissa as f32 * (1.0 / 16_777_216.0),
        0x1f => f32::from_bits(0x7f80_0000 | (mantissa << 13)),
        _ => f32::from_bits(((exponent + 112) << 23) | (mantissa << 13)),
    };
    if negative {
        -magnitude
    } else {
        magnitude
    }
}

/// bfloat16 to f32 (exact: bf16 is the top half of an f32).
fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_and_bfloat_conversions_are_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc0a0), -5.0);
    }

    #[test]
    fn decodes_little_endian_elements() {
        let bytes = [0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0];
        assert_eq!(ElementType::F32.decode_le(&bytes), TensorValues::F32(vec![1.0, -2.0]));
        assert_eq!(ElementType::I32.decode_le(&bytes), TensorValues::I64(vec![0x3f80_0000, -0x4000_0000]));
        assert_eq!(ElementType::I64.decode_le(&bytes), TensorValues::I64(vec![-0x3fff_ffff_c080_0000]));
        assert_eq!(ElementType::U8.decode_le(&bytes[2..4]), TensorValues::I64(vec![0x80, 0x3f]));
        assert_eq!(ElementType::I8.decode_le(&bytes[2..4]), TensorValues::I64(vec![-128, 63]));
        assert_eq!(ElementType::F64.decode_le(&[0, 0, 0, 0, 0, 0, 0xf0, 0x3f]), TensorValues::F32(vec![1.0]));
    }
}
