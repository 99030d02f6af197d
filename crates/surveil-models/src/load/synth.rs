//! Writing dummy checkpoints to disk, so the memory-mapped load path can be measured on a real
//! file without the real weights.
//!
//! A dummy checkpoint must never replace a real one by accident: a directory that already holds
//! checkpoint files ([`checkpoint_files_in`]) is refused unless the caller asks to replace them
//! ([`OnExisting::Replace`]). Every file is written under a temporary name in the output
//! directory and renamed into place, so nothing is ever written through a symbolic link (in a
//! Hugging Face cache snapshot the files are links into `../../blobs/`; a replaced link becomes
//! a regular file and the blob it pointed to is left as it was).

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use tempfile::NamedTempFile;

use crate::arch::ArchConfig;
use crate::load::registry::ModelSpec;
use crate::load::weights::{DummySource, TensorSource};
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
    /// Checkpoint files that were in the directory before (empty unless
    /// [`OnExisting::Replace`] was asked for). `config.json` and `model.safetensors` among them
    /// were replaced; the others were left as they were.
    pub replaced: Vec<String>,
}

/// What [`write_dummy_checkpoint_with`] does when the output directory already holds checkpoint
/// files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExisting {
    /// Fail with [`ModelError::CheckpointExists`], writing nothing.
    #[default]
    Refuse,
    /// Replace `config.json` and `model.safetensors` (a symbolic link at either name is replaced
    /// by a regular file; its target is not touched). Other files are left as they are.
    Replace,
}

/// Exact names of files that belong to a Hugging Face checkpoint (configs, tokenizers).
const CHECKPOINT_NAMES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.json",
    "chat_template.jinja",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "tiktoken.model",
];

/// Name endings of weight files and their indexes (`model.safetensors`,
/// `model-00001-of-00002.safetensors`, `model.safetensors.index.json`, `pytorch_model.bin`, ...).
const CHECKPOINT_SUFFIXES: &[&str] = &[
    ".safetensors",
    ".safetensors.index.json",
    ".bin",
    ".bin.index.json",
    ".gguf",
    ".pt",
    ".pth",
    ".ckpt",
];

/// Whether a file named `name` is part of a checkpoint: a config, a tokenizer file
/// (`tokenizer.json`, `tokenizer_config.json`, `tokenizer.model`, ...) or weights and their
/// index.
pub fn is_checkpoint_file_name(name: &str) -> bool {
    CHECKPOINT_NAMES.contains(&name)
        || name.starts_with("tokenizer")
        || CHECKPOINT_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The checkpoint files ([`is_checkpoint_file_name`]) in `dir`, sorted by name; symbolic links
/// count (also dangling ones, as in a partly downloaded cache snapshot). A directory that does
/// not exist holds none.
///
/// Errors: [`ModelError::Io`] when `dir` exists but cannot be listed.
pub fn checkpoint_files_in(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().map_err(io(dir))?.is_dir();
        if !is_dir && is_checkpoint_file_name(&name) {
            found.push(name);
        }
    }
    found.sort();
    Ok(found)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A new file in `dir` under a unique temporary name (`.NAME.XXXXXX.partial`), created
/// exclusively (never through an existing link), with the permissions `File::create` would give.
fn temporary_beside(dir: &Path, name: &str) -> Result<NamedTempFile> {
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".partial");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // 0o666 less the umask, as `File::create` does (tempfile's default is 0o600).
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir).map_err(io(dir))
}

/// Syncs `tmp` and renames it to `dir/name`, replacing whatever entry has that name (a link is
/// replaced, not followed).
fn persist(tmp: NamedTempFile, dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    tmp.persist(&path).map_err(|e| io(&path)(e.error))?;
    Ok(path)
}

/// [`write_dummy_checkpoint_with`] refusing a directory that already holds checkpoint files.
pub fn write_dummy_checkpoint(
    spec: &ModelSpec,
    out: &Path,
    dtype: DType,
    seed: u64,
    progress: impl FnMut(usize, usize),
) -> Result<SynthReport> {
    write_dummy_checkpoint_with(spec, out, dtype, seed, OnExisting::Refuse, progress)
}

/// Write `config.json` and a single `model.safetensors` with deterministic random weights of
/// `spec`'s full-size architecture in `dtype` (bf16 like the published checkpoints, or f32/f16)
/// into `out` (created if needed). Tensors are generated and written one at a time: memory stays
/// at one tensor. `progress(done, total)` is called after each tensor.
///
/// Each file is written under a temporary name in `out` and renamed into place once complete:
/// `model.safetensors` first, `config.json` last, so an interrupted write never leaves a
/// loadable-looking pair. A failed write removes its temporary file.
///
/// Errors: [`ModelError::CheckpointExists`] when `out` holds checkpoint files
/// ([`checkpoint_files_in`]) and `on_existing` is [`OnExisting::Refuse`] (nothing is written);
/// [`ModelError::InvalidInput`] for a dtype other than bf16, f16 or f32;
/// [`ModelError::Unsupported`] for an architecture without a full-size config;
/// [`ModelError::Io`] when a file cannot be written.
pub fn write_dummy_checkpoint_with(
    spec: &ModelSpec,
    out: &Path,
    dtype: DType,
    seed: u64,
    on_existing: OnExisting,
    mut progress: impl FnMut(usize, usize),
) -> Result<SynthReport> {
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
    let cfg = ArchConfig::full_size(spec)?;
    let existing = checkpoint_files_in(out)?;
    if !existing.is_empty() && on_existing == OnExisting::Refuse {
        return Err(ModelError::CheckpointExists {
            dir: out.to_path_buf(),
            files: existing,
        });
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let config_text = serde_json::to_string_pretty(&cfg.hub_config_json())
        .map_err(|e| ModelError::InvalidInput(format!("config serialization: {e}")))?;

    let layout = cfg.tensor_layout()?;
    let source = DummySource::new(spec.id, layout.clone(), DType::F32, seed);
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
    let tmp = temporary_beside(out, "model.safetensors")?;
    let tmp_path = tmp.path().to_path_buf();
    let mut w = BufWriter::with_capacity(1 << 20, tmp);
    w.write_all(&(header_bytes.len() as u64).to_le_bytes())
        .map_err(io(&tmp_path))?;
    w.write_all(&header_bytes).map_err(io(&tmp_path))?;
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
        w.write_all(&raw).map_err(io(&tmp_path))?;
        progress(i + 1, layout.len());
    }
    let tmp = w.into_inner().map_err(|e| io(&tmp_path)(e.into_error()))?;
    let path = persist(tmp, out, "model.safetensors")?;
    let file_bytes = std::fs::metadata(&path).map_err(io(&path))?.len();

    let mut config = temporary_beside(out, "config.json")?;
    config
        .write_all(config_text.as_bytes())
        .map_err(io(&out.join("config.json")))?;
    persist(config, out, "config.json")?;
    if !existing.is_empty() {
        tracing::warn!(dir = %out.display(), files = ?existing, "replaced config.json and model.safetensors of an existing checkpoint");
    }
    Ok(SynthReport {
        dir: out.to_path_buf(),
        tensors: layout.len(),
        parameters,
        file_bytes,
        replaced: existing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_file_names() {
        for name in [
            "config.json",
            "model.safetensors",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "tiktoken.model",
            "pytorch_model.bin",
        ] {
            assert!(is_checkpoint_file_name(name), "{name}");
        }
        for name in ["notes.txt", "README.md", ".gitattributes", "run.log"] {
            assert!(!is_checkpoint_file_name(name), "{name}");
        }
    }

    #[test]
    fn refused_directory_is_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let spec = crate::load::registry::find("git-base-coco").unwrap();
        let err = write_dummy_checkpoint(spec, dir.path(), DType::BF16, 0, |_, _| {}).unwrap_err();
        match &err {
            ModelError::CheckpointExists { dir: d, files } => {
                assert_eq!(d, dir.path());
                assert_eq!(files, &["tokenizer.json".to_string()]);
            }
            other => panic!("expected CheckpointExists, got {other:?}"),
        }
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["notes.txt", "tokenizer.json"]);
    }

    #[test]
    fn missing_directory_holds_no_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        assert!(checkpoint_files_in(&dir.path().join("absent"))
            .unwrap()
            .is_empty());
    }
}
