//! Device and precision selection.

use tch::{Device, Kind};

/// Where a model runs and in which floating-point precision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    pub device: Device,
    pub kind: Kind,
}

impl Placement {
    /// CUDA in fp16 when a GPU is visible, otherwise CPU in fp32 (CPU kernels
    /// for half precision are slow and less accurate).
    pub fn auto() -> Self {
        if tch::Cuda::is_available() {
            Self { device: Device::Cuda(0), kind: Kind::Half }
        } else {
            Self::cpu()
        }
    }

    /// CPU, fp32: the test and embedded default.
    pub fn cpu() -> Self {
        Self { device: Device::Cpu, kind: Kind::Float }
    }

    /// A `device` setting: `auto` ([`Self::auto`]), `cpu`, `cuda` or
    /// `cuda:N` (fp16 on CUDA).
    pub fn parse(setting: &str) -> Result<Self, String> {
        let cuda = |n| Ok(Self { device: Device::Cuda(n), kind: Kind::Half });
        match setting {
            "auto" => Ok(Self::auto()),
            "cpu" => Ok(Self::cpu()),
            "cuda" => cuda(0),
            _ => match setting.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(n) => cuda(n),
                None => Err(format!("{setting:?} is not one of auto, cpu, cuda, cuda:N")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn device_settings_parse() {
        assert_eq!(Placement::parse("cpu"), Ok(Placement::cpu()));
        assert_eq!(Placement::parse("cuda:1").unwrap().device, Device::Cuda(1));
        assert_eq!(Placement::parse("cuda").unwrap().kind, Kind::Half);
        assert!(Placement::parse("gpu").unwrap_err().contains("gpu"));
    }

    #[test]
    fn libtorch_links_and_computes() {
        let p = Placement::cpu();
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).view([2, 2]).to_device(p.device);
        let b = a.matmul(&a);
        let got: Vec<f32> = Vec::try_from(b.flatten(0, -1)).unwrap();
        assert_eq!(got, vec![7.0, 10.0, 15.0, 22.0]);
    }
}
