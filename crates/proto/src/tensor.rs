//! Raw tensors on the wire (`osa.v1.Tensor`) and their validated host form.
//!
//! The layout follows the Open Inference Protocol's raw tensor contents:
//! row-major, little-endian elements, dtype and shape beside the bytes.
//! [`HostTensor::try_from`] checks everything a receiver relies on (known
//! dtype, shape product without overflow, byte length), so code past the edge
//! never re-checks.

use crate::v1;

/// Element type, the domain twin of [`v1::DataType`] without the unset value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    Bf16,
    U8,
    I64,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::U8 => 1,
            DType::I64 => 8,
        }
    }

    /// Lower-case name, as used in error messages and configs.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::U8 => "u8",
            DType::I64 => "i64",
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<DType> for v1::DataType {
    fn from(d: DType) -> Self {
        match d {
            DType::F32 => v1::DataType::F32,
            DType::F16 => v1::DataType::F16,
            DType::Bf16 => v1::DataType::Bf16,
            DType::U8 => v1::DataType::U8,
            DType::I64 => v1::DataType::I64,
        }
    }
}

/// Why a wire tensor was rejected. Messages are written for the client: the
/// caller prefixes the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("dtype is unset or unknown (value {0})")]
    UnknownDType(i32),
    #[error("shape {shape:?} overflows")]
    ShapeOverflow { shape: Vec<u64> },
    #[error("shape {shape:?} of {dtype} needs {expected} bytes, got {actual}")]
    ByteLength { shape: Vec<usize>, dtype: DType, expected: usize, actual: usize },
    #[error("expected dtype {expected}, got {actual}")]
    WrongDType { expected: DType, actual: DType },
    #[error("expected shape {expected}, got {actual:?}")]
    WrongShape { expected: String, actual: Vec<usize> },
}

/// A validated tensor: `data.len() == shape.iter().product() * dtype.size()`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl HostTensor {
    /// Builds a tensor, checking the byte length against dtype and shape.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self, TensorError> {
        let expected =
            checked_numel(&shape).and_then(|n| n.checked_mul(dtype.size())).ok_or_else(|| {
                TensorError::ShapeOverflow { shape: shape.iter().map(|&d| d as u64).collect() }
            })?;
        if expected != data.len() {
            return Err(TensorError::ByteLength { shape, dtype, expected, actual: data.len() });
        }
        Ok(Self { dtype, shape, data })
    }

    /// An f32 tensor from host values (copied into little-endian bytes).
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self, TensorError> {
        let mut data = Vec::with_capacity(values.len() * 4);
        for v in values {
            data.extend_from_slice(&v.to_le_bytes());
        }
        Self::new(DType::F32, shape, data)
    }

    /// An f16 tensor from f32 host values (rounded to nearest).
    pub fn from_f32_as_f16(shape: Vec<usize>, values: &[f32]) -> Result<Self, TensorError> {
        let mut data = Vec::with_capacity(values.len() * 2);
        for v in values {
            data.extend_from_slice(&half::f16::from_f32(*v).to_le_bytes());
        }
        Self::new(DType::F16, shape, data)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Fails unless the dtype is `dtype`.
    pub fn expect_dtype(&self, dtype: DType) -> Result<(), TensorError> {
        if self.dtype == dtype {
            Ok(())
        } else {
            Err(TensorError::WrongDType { expected: dtype, actual: self.dtype })
        }
    }

    /// Fails unless every dimension matches; `None` in `expected` matches
    /// any size.
    pub fn expect_shape(&self, expected: &[Option<usize>]) -> Result<(), TensorError> {
        let ok = expected.len() == self.shape.len()
            && expected.iter().zip(&self.shape).all(|(e, a)| e.is_none_or(|e| e == *a));
        if ok {
            return Ok(());
        }
        let dims: Vec<String> =
            expected.iter().map(|e| e.map_or_else(|| "*".to_owned(), |v| v.to_string())).collect();
        Err(TensorError::WrongShape {
            expected: format!("[{}]", dims.join(", ")),
            actual: self.shape.clone(),
        })
    }

    /// Elements widened to f32 (f32, f16 and bf16 only; `None` otherwise).
    pub fn to_f32_vec(&self) -> Option<Vec<f32>> {
        let chunks2 = || self.data.chunks_exact(2).map(|c| [c[0], c[1]]);
        match self.dtype {
            DType::F32 => Some(
                self.data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            DType::F16 => Some(chunks2().map(|b| half::f16::from_le_bytes(b).to_f32()).collect()),
            DType::Bf16 => Some(chunks2().map(|b| half::bf16::from_le_bytes(b).to_f32()).collect()),
            DType::U8 | DType::I64 => None,
        }
    }
}

fn checked_numel(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

impl TryFrom<v1::Tensor> for HostTensor {
    type Error = TensorError;

    fn try_from(t: v1::Tensor) -> Result<Self, Self::Error> {
        let dtype = match v1::DataType::try_from(t.dtype) {
            Ok(v1::DataType::F32) => DType::F32,
            Ok(v1::DataType::F16) => DType::F16,
            Ok(v1::DataType::Bf16) => DType::Bf16,
            Ok(v1::DataType::U8) => DType::U8,
            Ok(v1::DataType::I64) => DType::I64,
            Ok(v1::DataType::Unspecified) | Err(_) => {
                return Err(TensorError::UnknownDType(t.dtype));
            }
        };
        let overflow = || TensorError::ShapeOverflow { shape: t.shape.clone() };
        let shape = t
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| overflow()))
            .collect::<Result<Vec<_>, _>>()?;
        HostTensor::new(dtype, shape, t.data)
    }
}

impl From<HostTensor> for v1::Tensor {
    fn from(t: HostTensor) -> Self {
        v1::Tensor {
            dtype: v1::DataType::from(t.dtype) as i32,
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            data: t.data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_wire_type() {
        let t = HostTensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]).unwrap();
        let wire: v1::Tensor = t.clone().into();
        assert_eq!(wire.dtype, v1::DataType::F32 as i32);
        let back = HostTensor::try_from(wire).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.to_f32_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
    }

    #[test]
    fn f16_widens_to_the_same_values() {
        let t = HostTensor::from_f32_as_f16(vec![3], &[0.5, -2.0, 1024.0]).unwrap();
        assert_eq!(t.data().len(), 6);
        assert_eq!(t.to_f32_vec().unwrap(), vec![0.5, -2.0, 1024.0]);
    }

    #[test]
    fn rejects_wrong_byte_length() {
        let wire =
            v1::Tensor { dtype: v1::DataType::F16 as i32, shape: vec![2, 2], data: vec![0; 7] };
        let err = HostTensor::try_from(wire).unwrap_err();
        assert_eq!(err.to_string(), "shape [2, 2] of f16 needs 8 bytes, got 7");
    }

    #[test]
    fn rejects_unset_dtype_and_overflowing_shapes() {
        let unset = v1::Tensor { dtype: 0, shape: vec![1], data: vec![0] };
        assert_eq!(HostTensor::try_from(unset).unwrap_err(), TensorError::UnknownDType(0));
        let unknown = v1::Tensor { dtype: 99, shape: vec![1], data: vec![0] };
        assert_eq!(HostTensor::try_from(unknown).unwrap_err(), TensorError::UnknownDType(99));
        let huge =
            v1::Tensor { dtype: v1::DataType::F32 as i32, shape: vec![u64::MAX, 2], data: vec![] };
        assert!(matches!(HostTensor::try_from(huge), Err(TensorError::ShapeOverflow { .. })));
    }

    #[test]
    fn shape_and_dtype_expectations_name_the_mismatch() {
        let t = HostTensor::from_f32(vec![12, 4, 8, 8], &vec![0.0; 12 * 4 * 64]).unwrap();
        assert!(t.expect_shape(&[None, Some(4), Some(8), Some(8)]).is_ok());
        let err = t.expect_shape(&[Some(12), Some(4), Some(16), None]).unwrap_err();
        assert_eq!(err.to_string(), "expected shape [12, 4, 16, *], got [12, 4, 8, 8]");
        assert_eq!(
            t.expect_dtype(DType::F16).unwrap_err().to_string(),
            "expected dtype f16, got f32"
        );
    }
}
