//! A tensor handler's signature: per input and per output an element type and a
//! per-item shape (the batch dimension is implicit and leading), and where the batch
//! tensors live (host memory, or a CUDA device). Checked once, at load.

use crate::dtype::DType;
use crate::error::{Error, Result};

/// Most inputs or outputs a signature may declare.
pub const MAX_TENSORS: usize = 64;
/// Most dimensions of a per-item shape (the batch dimension comes on top).
pub const MAX_ITEM_NDIM: usize = 32;

/// One input or output: an element type and the shape of one item (`[]` for a scalar
/// per item). The batch tensor has shape `(B, *shape)`, C order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    pub dtype: DType,
    pub shape: Vec<usize>,
}

impl TensorSpec {
    pub fn new(dtype: DType, shape: &[usize]) -> TensorSpec {
        TensorSpec { dtype, shape: shape.to_vec() }
    }

    /// Elements per item (1 for a scalar). Valid once the signature is checked.
    pub fn item_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes per item, C order. Valid once the signature is checked.
    pub fn item_bytes(&self) -> usize {
        self.item_elements() * self.dtype.size_bytes()
    }

    /// "float32[64]", "uint8[3, 224, 224]", "int64 scalar".
    pub fn describe(&self) -> String {
        if self.shape.is_empty() {
            format!("{} scalar", self.dtype.name())
        } else {
            let dims: Vec<String> = self.shape.iter().map(usize::to_string).collect();
            format!("{}[{}]", self.dtype.name(), dims.join(", "))
        }
    }

    fn check(&self, what: &str, batch_size: usize) -> Result<()> {
        if self.shape.len() > MAX_ITEM_NDIM {
            return Err(Error::invalid_argument(format!(
                "{what} has {} dimensions per item, at most {MAX_ITEM_NDIM} are allowed",
                self.shape.len()
            )));
        }
        if let Some(d) = self.shape.iter().position(|&n| n == 0) {
            return Err(Error::invalid_argument(format!("{what} has size 0 in dimension {d}")));
        }
        let too_big = || {
            Error::invalid_argument(format!(
                "{what} ({}) is too large: a batch of {batch_size} items overflows the address space",
                self.describe()
            ))
        };
        let elements =
            self.shape.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)).ok_or_else(too_big)?;
        let batch_bytes = elements
            .checked_mul(self.dtype.size_bytes())
            .and_then(|b| b.checked_mul(batch_size))
            .ok_or_else(too_big)?;
        if batch_bytes > isize::MAX as usize / 2 {
            return Err(too_big());
        }
        Ok(())
    }
}

/// Where a tensor handler's batch tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Host memory: the function gets CPU tensors (DLPack device `(1, 0)`, and the
    /// buffer protocol).
    #[default]
    Host,
    /// A CUDA device ordinal: inputs are gathered in pinned host memory and copied to
    /// the device once per input per batch, on the handler's stream.
    Cuda(i32),
}

/// What a tensor handler's function takes and returns.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TensorSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub placement: Placement,
}

impl TensorSignature {
    pub fn new(inputs: Vec<TensorSpec>, outputs: Vec<TensorSpec>) -> TensorSignature {
        TensorSignature { inputs, outputs, placement: Placement::Host }
    }

    pub fn on_cuda(mut self, device: i32) -> TensorSignature {
        self.placement = Placement::Cuda(device);
        self
    }

    /// Checks the signature for batches of up to `batch_size` items.
    pub fn validate(&self, batch_size: usize) -> Result<()> {
        if self.inputs.is_empty() {
            return Err(Error::invalid_argument("a tensor signature needs at least one input"));
        }
        if self.inputs.len() > MAX_TENSORS || self.outputs.len() > MAX_TENSORS {
            return Err(Error::invalid_argument(format!(
                "a tensor signature has at most {MAX_TENSORS} inputs and {MAX_TENSORS} outputs, got {} and {}",
                self.inputs.len(),
                self.outputs.len()
            )));
        }
        for (k, spec) in self.inputs.iter().enumerate() {
            spec.check(&format!("input {k}"), batch_size)?;
        }
        for (k, spec) in self.outputs.iter().enumerate() {
            spec.check(&format!("output {k}"), batch_size)?;
        }
        if let Placement::Cuda(device) = self.placement {
            if device < 0 {
                return Err(Error::invalid_argument(format!("CUDA device ordinal {device} is negative")));
            }
        }
        Ok(())
    }

    /// "(float32[64]) -> (float32[16])".
    pub fn describe(&self) -> String {
        let list =
            |specs: &[TensorSpec]| specs.iter().map(TensorSpec::describe).collect::<Vec<_>>().join(", ");
        format!("({}) -> ({})", list(&self.inputs), list(&self.outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_signatures_are_refused_with_a_reason() {
        let f32_64 = TensorSpec::new(DType::F32, &[64]);
        let ok = TensorSignature::new(vec![f32_64.clone()], vec![TensorSpec::new(DType::F32, &[])]);
        assert!(ok.validate(256).is_ok());
        let err = |s: TensorSignature| s.validate(256).unwrap_err().to_string();
        assert!(err(TensorSignature::new(vec![], vec![])).contains("at least one input"));
        assert!(err(TensorSignature::new(vec![TensorSpec::new(DType::F32, &[3, 0])], vec![]))
            .contains("size 0 in dimension 1"));
        assert!(err(TensorSignature::new(vec![TensorSpec::new(DType::F64, &[usize::MAX / 4, 4])], vec![]))
            .contains("too large"));
        assert!(err(TensorSignature::new(
            vec![f32_64.clone()],
            vec![TensorSpec::new(DType::U8, &[1 << 56])]
        ))
        .contains("output 0"));
        assert!(err(TensorSignature::new(vec![f32_64.clone()], vec![]).on_cuda(-1)).contains("negative"));
        assert!(err(TensorSignature::new(vec![f32_64; MAX_TENSORS + 1], vec![])).contains("at most"));
    }

    #[test]
    fn descriptions_read_as_shapes() {
        let s = TensorSignature::new(
            vec![TensorSpec::new(DType::U8, &[3, 224, 224]), TensorSpec::new(DType::I64, &[])],
            vec![TensorSpec::new(DType::F32, &[16])],
        );
        assert_eq!(s.describe(), "(uint8[3, 224, 224], int64 scalar) -> (float32[16])");
        assert_eq!(s.inputs[0].item_bytes(), 3 * 224 * 224);
        assert_eq!(s.inputs[1].item_bytes(), 8);
    }
}
