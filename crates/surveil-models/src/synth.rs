//! Writing dummy checkpoints to disk, so the memory-mapped load path can be measured on a real
//! file without the real weights.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};

use crate::arch::ArchConfig;
use crate::registry::ModelSpec;
use crate::weights::{DummySource, TensorSource};
use crate::{ModelError, Result};

/// What [`write_dummy_checkpoint`] wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SynthReport {
    /// The directory.
    pub dir: PathBuf,
    /// Tensors written.
    pub tensors: usize,
    /// Parameters written.
    pub parameters: u64,
    /// Size of `model.safetensors`.
    pub file_bytes: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write `config.json` and a single `model.safetensors` with deterministic random weights of
/// `spec`'s full-size architecture in `dtype` (bf16 like the published checkpoints, or f32/f16).
/// Tensors are generated and written one at a time: memory stays at one tensor.
pub fn write_dummy_checkpoint(
    spec: &ModelSpec,
    out: &Path,
    dtype: DType,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<SynthReport> {
    let cfg = ArchConfig::full_size(spec)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let config_path = out.join("config.json");
    let text = serde_json::to_string_pretty(&cfg.hub_config_json())
        .map_err(|e| ModelError::InvalidInput(format!("config serialization: {e}")))?;
    std::fs::write(&config_path, text).map_err(io(&config_path))?;

    let layout = cfg.tensor_layout()?;
    let source = DummySource::new(spec.id, layout.clone(), DType::F32, seed);
    let (dtype_name, elem) = match dtype {
        DType::BF16 => ("BF16", 2usize),
        DType::F16 => ("F16", 2),
        DType::F32 => ("F32", 4),
        other => {
            return Err(ModelError::InvalidInput(format!(
                "dummy checkpoints are written in bf16, f16 or f32, not {other:?}"
            )))
        }
    };
    // Header: every tensor's dtype, shape and byte range, in layout order.
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in &layout {
        let bytes = shape.iter().product::<usize>() * elem;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype_name, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header_bytes = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| ModelError::InvalidInput(format!("header serialization: {e}")))?;
    while header_bytes.len() % 8 != 0 {
        header_bytes.push(b' ');
    }
    let path = out.join("model.safetensors");
    let tmp = out.join("model.safetensors.partial");
    let file = File::create(&tmp).map_err(io(&tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(&(header_bytes.len() as u64).to_le_bytes())
        .map_err(io(&tmp))?;
    w.write_all(&header_bytes).map_err(io(&tmp))?;
    let mut parameters = 0u64;
    for (i, (name, shape)) in layout.iter().enumerate() {
        let t = source.load(name, &Device::Cpu)?.to_dtype(dtype)?;
        parameters += shape.iter().map(|&d| d as u64).product::<u64>();
        let raw: Vec<u8> = match dtype {
            DType::BF16 => t
                .flatten_all()?
                .to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            DType::F16 => t
                .flatten_all()?
                .to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            _ => t
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        };
        w.write_all(&raw).map_err(io(&tmp))?;
        progress(i + 1, layout.len());
    }
    w.flush().map_err(io(&tmp))?;
    drop(w);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    let file_bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
    Ok(SynthReport {
        dir: out.to_path_buf(),
        tensors: layout.len(),
        parameters,
        file_bytes,
    })
}
