//! Header-only estimates of real-shaped checkpoints, written with the reference `safetensors`
//! crate, and every header error case.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use surveil_memory::checkpoint::{read_safetensors_header, MAX_INDEX_BYTES};
use surveil_memory::{
    estimate_checkpoint, estimate_tensors, CheckpointHeader, MemoryError, QuantPolicy, ShardIndex,
    StorageDtype, MAX_HEADER_BYTES,
};

/// How the test expects a tensor to be stored under the 4-bit policy with f16 fallback,
/// decided by hand from its role and row length (not by calling the library).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Linear, row divides by 256: 144 bytes per 256 weights.
    Q4K,
    /// Linear, row divides by 32 but not 256: 18 bytes per 32 weights.
    Q4_0,
    /// Linear whose row divides by neither (float fallback), or a token embedding table: the
    /// policy's float type, f16.
    F16,
    /// Everything else (norms, biases, convolutions, position embeddings): f32.
    F32,
}

impl Expect {
    fn bytes(self, shape: &[usize]) -> u64 {
        let n: u64 = shape.iter().map(|&d| d as u64).product();
        match self {
            Expect::Q4K => n / 256 * 144,
            Expect::Q4_0 => n / 32 * 18,
            Expect::F16 => n * 2,
            Expect::F32 => n * 4,
        }
    }
}

/// Real shapes: a Qwen2-VL-2B decoder layer (hidden 1536, 2 KV heads of 128, MLP 8960; gate
/// and up projections left out to keep the file small), its vision patch embedding, a Kimi-VL
/// MoonViT block (hidden 1152, MLP 4304), DeepSeek-V3-style MoE pieces (hidden 2048) and the
/// GIT-base token embedding table (30522 × 768).
fn real_shaped_tensors() -> Vec<(&'static str, Vec<usize>, Expect, bool)> {
    // (name, shape, expected storage, is a linear that falls back to float)
    vec![
        (
            "model.layers.0.self_attn.q_proj.weight",
            vec![1536, 1536],
            Expect::Q4K,
            false,
        ),
        (
            "model.layers.0.self_attn.q_proj.bias",
            vec![1536],
            Expect::F32,
            false,
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            vec![256, 1536],
            Expect::Q4K,
            false,
        ),
        (
            "model.layers.0.self_attn.k_proj.bias",
            vec![256],
            Expect::F32,
            false,
        ),
        (
            "model.layers.0.self_attn.v_proj.weight",
            vec![256, 1536],
            Expect::Q4K,
            false,
        ),
        (
            "model.layers.0.self_attn.v_proj.bias",
            vec![256],
            Expect::F32,
            false,
        ),
        (
            "model.layers.0.self_attn.o_proj.weight",
            vec![1536, 1536],
            Expect::Q4K,
            false,
        ),
        (
            "model.layers.0.mlp.down_proj.weight",
            vec![1536, 8960],
            Expect::Q4K,
            false,
        ),
        (
            "model.layers.0.input_layernorm.weight",
            vec![1536],
            Expect::F32,
            false,
        ),
        (
            "model.layers.0.post_attention_layernorm.weight",
            vec![1536],
            Expect::F32,
            false,
        ),
        (
            "visual.patch_embed.proj.weight",
            vec![1280, 3, 2, 14, 14],
            Expect::F32,
            false,
        ),
        (
            "vision_tower.encoder.blocks.0.wqkv.weight",
            vec![3456, 1152],
            Expect::Q4_0,
            false,
        ),
        (
            "vision_tower.encoder.blocks.0.wqkv.bias",
            vec![3456],
            Expect::F32,
            false,
        ),
        (
            "vision_tower.encoder.blocks.0.wo.weight",
            vec![1152, 1152],
            Expect::Q4_0,
            false,
        ),
        (
            "vision_tower.encoder.blocks.0.mlp.fc0.weight",
            vec![4304, 1152],
            Expect::Q4_0,
            false,
        ),
        (
            "vision_tower.encoder.blocks.0.mlp.fc1.weight",
            vec![1152, 4304],
            Expect::F16,
            true,
        ),
        (
            "vision_tower.encoder.blocks.0.norm0.weight",
            vec![1152],
            Expect::F32,
            false,
        ),
        (
            "vision_tower.patch_embed.pos_emb.weight",
            vec![64, 64, 1152],
            Expect::F32,
            false,
        ),
        (
            "git.embeddings.word_embeddings.weight",
            vec![30522, 768],
            Expect::F16,
            false,
        ),
        (
            "git.embeddings.position_embeddings.weight",
            vec![1024, 768],
            Expect::F32,
            false,
        ),
        (
            "language_model.model.layers.1.mlp.gate.weight",
            vec![64, 2048],
            Expect::Q4K,
            false,
        ),
        (
            "language_model.model.layers.1.mlp.experts.0.gate_proj.weight",
            vec![1408, 2048],
            Expect::Q4K,
            false,
        ),
        (
            "language_model.model.layers.1.self_attn.kv_a_proj_with_mqa.weight",
            vec![576, 2048],
            Expect::Q4K,
            false,
        ),
        (
            "language_model.model.layers.1.self_attn.kv_a_layernorm.weight",
            vec![512],
            Expect::F32,
            false,
        ),
    ]
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Writes `tensors` as BF16 with the reference implementation.
fn write_checkpoint(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let largest = tensors.iter().map(|(_, s)| numel(s) * 2).max().unwrap_or(0);
    let zeros = vec![0u8; largest];
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, shape)| {
            let bytes = &zeros[..numel(shape) * 2];
            let view = TensorView::new(Dtype::BF16, shape.clone(), bytes).unwrap();
            (name.to_string(), view)
        })
        .collect();
    let metadata = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize_to_file(views, Some(metadata), path).unwrap();
}

fn names_and_shapes() -> Vec<(&'static str, Vec<usize>)> {
    real_shaped_tensors()
        .into_iter()
        .map(|(n, s, _, _)| (n, s))
        .collect()
}

#[test]
fn estimate_of_real_shaped_file_matches_independent_sum() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_checkpoint(&path, &names_and_shapes());

    let table = real_shaped_tensors();
    let mut expected_total = 0u64;
    let mut expected_by_dtype: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for (_, shape, expect, _) in &table {
        let bytes = expect.bytes(shape);
        expected_total += bytes;
        let key = match expect {
            Expect::Q4K => "q4k",
            Expect::Q4_0 => "q4_0",
            Expect::F16 => "f16",
            Expect::F32 => "f32",
        };
        let slot = expected_by_dtype.entry(key).or_default();
        slot.0 += 1;
        slot.1 += bytes;
    }
    let expected_stored: u64 = table.iter().map(|(_, s, _, _)| numel(s) as u64 * 2).sum();
    let expected_fallbacks: Vec<&str> = table
        .iter()
        .filter(|(_, _, _, fallback)| *fallback)
        .map(|(n, _, _, _)| *n)
        .collect();

    let policy = QuantPolicy::four_bit(StorageDtype::F16);
    let est = estimate_checkpoint(&path, &policy).unwrap();
    assert_eq!(est.total_bytes, expected_total);
    assert_eq!(est.stored_bytes, Some(expected_stored));
    assert_eq!(est.tensor_count, table.len());
    let got_by_dtype: BTreeMap<&str, (usize, u64)> = est
        .by_dtype
        .iter()
        .map(|(d, t)| (d.name(), (t.tensors, t.bytes)))
        .collect();
    assert_eq!(got_by_dtype, expected_by_dtype);
    let got_fallbacks: Vec<&str> = est
        .float_fallbacks
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(got_fallbacks, expected_fallbacks);
    assert_eq!(est.float_fallbacks[0].shape, vec![1152, 4304]);
    assert_eq!(est.float_fallbacks[0].storage, StorageDtype::F16);

    // Unquantized bf16: linear weights and tables at 2 bytes, the rest stays f32.
    let plain = estimate_checkpoint(&path, &QuantPolicy::unquantized(StorageDtype::Bf16)).unwrap();
    let expected_plain: u64 = table
        .iter()
        .map(|(_, s, e, _)| numel(s) as u64 * if *e == Expect::F32 { 4 } else { 2 })
        .sum();
    assert_eq!(plain.total_bytes, expected_plain);
    assert!(plain.float_fallbacks.is_empty());

    // The in-memory path (dummy weights) agrees with the file path.
    let shapes = names_and_shapes();
    let in_memory = estimate_tensors(shapes.iter().map(|(n, s)| (*n, s.as_slice())), &policy);
    assert_eq!(in_memory.total_bytes, est.total_bytes);
    assert_eq!(in_memory.by_dtype, est.by_dtype);
    assert_eq!(in_memory.stored_bytes, None);
}

#[test]
fn header_lists_tensors_and_metadata_without_reading_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_checkpoint(&path, &names_and_shapes());
    let header = read_safetensors_header(&path).unwrap();
    assert_eq!(
        header.metadata.get("format").map(String::as_str),
        Some("pt")
    );
    let file_len = std::fs::metadata(&path).unwrap().len();
    assert_eq!(header.file_len, file_len);
    let data: u64 = header.tensors.iter().map(|t| t.stored_bytes).sum();
    assert_eq!(8 + header.header_len + data, file_len);
    let q = header
        .tensors
        .iter()
        .find(|t| t.name == "model.layers.0.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(q.shape, vec![1536, 1536]);
    assert_eq!(q.dtype, "BF16");
    assert_eq!(q.stored_bytes, 1536 * 1536 * 2);
    // Sorted by name.
    let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

/// Splits the tensors over two shards with an index, like Hugging Face does.
fn write_sharded(dir: &Path) -> PathBuf {
    let all = names_and_shapes();
    let (first, second) = all.split_at(all.len() / 2);
    let shard1 = "model-00001-of-00002.safetensors";
    let shard2 = "model-00002-of-00002.safetensors";
    write_checkpoint(&dir.join(shard1), first);
    write_checkpoint(&dir.join(shard2), second);
    let mut weight_map = serde_json::Map::new();
    for (name, _) in first {
        weight_map.insert(name.to_string(), shard1.into());
    }
    for (name, _) in second {
        weight_map.insert(name.to_string(), shard2.into());
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    let path = dir.join("model.safetensors.index.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    path
}

#[test]
fn sharded_checkpoint_via_index_and_directory() {
    let single_dir = tempfile::tempdir().unwrap();
    let single = single_dir.path().join("model.safetensors");
    write_checkpoint(&single, &names_and_shapes());
    let sharded_dir = tempfile::tempdir().unwrap();
    let index = write_sharded(sharded_dir.path());

    let policy = QuantPolicy::four_bit(StorageDtype::F16);
    let one = estimate_checkpoint(&single, &policy).unwrap();
    let via_index = estimate_checkpoint(&index, &policy).unwrap();
    let via_dir = estimate_checkpoint(sharded_dir.path(), &policy).unwrap();
    let via_single_dir = estimate_checkpoint(single_dir.path(), &policy).unwrap();
    assert_eq!(via_index, one);
    assert_eq!(via_dir, one);
    assert_eq!(via_single_dir, one);
    let header = CheckpointHeader::read(&index).unwrap();
    assert_eq!(header.files.len(), 2);
    assert_eq!(header.tensors.len(), real_shaped_tensors().len());
}

fn write_raw(path: &Path, header_len: u64, body: &[u8]) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&header_len.to_le_bytes()).unwrap();
    f.write_all(body).unwrap();
}

/// The error's message must name the file so a user knows which download to redo.
fn assert_names_file(err: &MemoryError, path: &Path) {
    let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.to_string().contains(&file_name), "{err}");
}

#[test]
fn file_shorter_than_length_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    std::fs::write(&path, [1, 2, 3, 4, 5]).unwrap();
    let err = read_safetensors_header(&path).unwrap_err();
    assert!(
        matches!(err, MemoryError::TruncatedHeaderLength { file_len: 5, .. }),
        "{err:?}"
    );
    assert_names_file(&err, &path);
}

#[test]
fn header_length_beyond_end_of_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.safetensors");
    write_raw(&path, 1000, b"{\"a\":");
    let err = read_safetensors_header(&path).unwrap_err();
    assert!(
        matches!(
            err,
            MemoryError::HeaderLengthExceedsFile {
                header_len: 1000,
                file_len: 13,
                ..
            }
        ),
        "{err:?}"
    );
    assert_names_file(&err, &path);

    // An absurd length must be rejected before any allocation is attempted (allocating
    // u64::MAX bytes would abort the test process).
    write_raw(&path, u64::MAX, b"{}");
    let err = read_safetensors_header(&path).unwrap_err();
    assert!(
        matches!(err, MemoryError::HeaderLengthExceedsFile { .. }),
        "{err:?}"
    );
}

#[test]
fn header_over_100_mb_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge-header.safetensors");
    let claimed = MAX_HEADER_BYTES + 20_000_000;
    write_raw(&path, claimed, b"{");
    // Sparse: the file is big enough to hold the claimed header without using disk.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(8 + claimed + 1000).unwrap();
    let err = read_safetensors_header(&path).unwrap_err();
    assert!(
        matches!(err, MemoryError::HeaderTooLarge { header_len, limit, .. }
            if header_len == claimed && limit == 100_000_000),
        "{err:?}"
    );
    assert_names_file(&err, &path);
}

#[test]
fn bad_json_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-json.safetensors");
    let body = b"{not json}";
    write_raw(&path, body.len() as u64, body);
    let err = read_safetensors_header(&path).unwrap_err();
    assert!(matches!(err, MemoryError::HeaderJson { .. }), "{err:?}");
    assert_names_file(&err, &path);

    // Valid JSON, wrong shape (an array instead of an object).
    let body = b"[1, 2, 3]";
    write_raw(&path, body.len() as u64, body);
    let err = read_safetensors_header(&path).unwrap_err();
    assert!(matches!(err, MemoryError::HeaderJson { .. }), "{err:?}");
}

fn header_with(path: &Path, entry: serde_json::Value, data_len: usize) {
    let header = serde_json::to_vec(&serde_json::json!({ "t": entry })).unwrap();
    let mut body = header.clone();
    body.extend(std::iter::repeat_n(0u8, data_len));
    write_raw(path, header.len() as u64, &body);
}

#[test]
fn malformed_tensor_entries_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entries.safetensors");
    let cases = [
        (
            serde_json::json!({"dtype": "F32", "shape": "2x2", "data_offsets": [0, 16]}),
            16,
            "invalid type",
        ),
        (
            serde_json::json!({"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 0]}),
            16,
            "reversed",
        ),
        (
            serde_json::json!({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}),
            8,
            "file truncated?",
        ),
        (
            serde_json::json!({"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}),
            8,
            "needs 16 bytes",
        ),
    ];
    for (entry, data_len, needle) in cases {
        header_with(&path, entry, data_len);
        let err = read_safetensors_header(&path).unwrap_err();
        match &err {
            MemoryError::InvalidTensor { tensor, reason, .. } => {
                assert_eq!(tensor, "t");
                assert!(reason.contains(needle), "{reason} lacks {needle}");
            }
            other => panic!("expected InvalidTensor, got {other:?}"),
        }
        assert_names_file(&err, &path);
    }
}

#[test]
fn truncated_download_is_detected_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_checkpoint(&path, &names_and_shapes());
    let full = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(full / 2).unwrap();
    let err = estimate_checkpoint(&path, &QuantPolicy::four_bit(StorageDtype::F16)).unwrap_err();
    assert!(matches!(err, MemoryError::InvalidTensor { .. }), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");
    assert_names_file(&err, &path);
}

#[test]
fn index_errors() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_sharded(dir.path());
    let policy = QuantPolicy::four_bit(StorageDtype::F16);
    let original = std::fs::read_to_string(&index).unwrap();

    // A shard path escaping the checkpoint directory.
    let escaping = original.replace(
        "model-00002-of-00002.safetensors",
        "../elsewhere.safetensors",
    );
    std::fs::write(&index, escaping).unwrap();
    let err = estimate_checkpoint(&index, &policy).unwrap_err();
    assert!(
        matches!(&err, MemoryError::InvalidIndex { reason, .. } if reason.contains("../elsewhere")),
        "{err:?}"
    );

    // A shard that does not exist: the error names it.
    let missing = original.replace("model-00002-of-00002", "model-00009-of-00009");
    std::fs::write(&index, missing).unwrap();
    let err = estimate_checkpoint(&index, &policy).unwrap_err();
    assert!(matches!(err, MemoryError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains("model-00009-of-00009.safetensors"),
        "{err}"
    );

    // A tensor the shard does not hold.
    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    json["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors".into();
    std::fs::write(&index, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = estimate_checkpoint(&index, &policy).unwrap_err();
    assert!(
        matches!(&err, MemoryError::InvalidIndex { reason, .. } if reason.contains("lm_head.weight")),
        "{err:?}"
    );
    assert_names_file(&err, &index);

    // Not JSON at all.
    std::fs::write(&index, "weights").unwrap();
    let err = estimate_checkpoint(&index, &policy).unwrap_err();
    assert!(matches!(err, MemoryError::InvalidIndex { .. }), "{err:?}");
}

#[test]
fn missing_file_and_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let policy = QuantPolicy::four_bit(StorageDtype::F16);
    let path = dir.path().join("absent.safetensors");
    let err = estimate_checkpoint(&path, &policy).unwrap_err();
    assert!(matches!(err, MemoryError::Io { .. }), "{err:?}");
    assert_names_file(&err, &path);
    let err = estimate_checkpoint(dir.path(), &policy).unwrap_err();
    assert!(matches!(err, MemoryError::NoCheckpoint { .. }), "{err:?}");
}

/// A file of two F32 tensors `a` (bytes 0..8) and `b` (8..16) with `extra` bytes after them.
fn two_tensor_file(path: &Path, b_offsets: [u64; 2], extra: usize) {
    let header = serde_json::to_vec(&serde_json::json!({
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [2], "data_offsets": b_offsets},
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend(std::iter::repeat_n(0u8, b_offsets[1] as usize + extra));
    write_raw(path, header.len() as u64, &body);
}

#[test]
fn layout_rules_refuse_unused_bytes_and_unknown_dtypes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layout.safetensors");
    let policy = QuantPolicy::four_bit(StorageDtype::F16);

    // Tiled exactly: accepted everywhere.
    two_tensor_file(&path, [8, 16], 0);
    assert_eq!(estimate_checkpoint(&path, &policy).unwrap().tensor_count, 2);

    // Trailing padding and a gap: the per-file parse sizes them, a checkpoint read refuses.
    for (offsets, extra, start, end, place) in [
        ([8, 16], 5, 16, 21, "after the last tensor, `b`"),
        ([12, 20], 0, 8, 12, "before tensor `b`"),
    ] {
        two_tensor_file(&path, offsets, extra);
        let header = read_safetensors_header(&path).unwrap();
        assert_eq!(header.tensors.len(), 2);
        let err = header.check_layout().unwrap_err();
        assert!(
            matches!(&err, MemoryError::UnindexedBytes { start: s, end: e, place: p, .. }
                if *s == start && *e == end && p == place),
            "{err:?}"
        );
        assert_names_file(&err, &path);
        let err = estimate_checkpoint(&path, &policy).unwrap_err();
        assert!(matches!(err, MemoryError::UnindexedBytes { .. }), "{err:?}");
        assert!(err.to_string().contains(place), "{err}");
    }

    // A dtype the format does not define: the tensor is named.
    header_with(
        &path,
        serde_json::json!({"dtype": "F33", "shape": [32], "data_offsets": [0, 4]}),
        4,
    );
    assert!(read_safetensors_header(&path).is_ok());
    let err = CheckpointHeader::read(&path).unwrap_err();
    assert!(
        matches!(&err, MemoryError::InvalidTensor { tensor, reason, .. }
            if tensor == "t" && reason.contains("F33")),
        "{err:?}"
    );
}

#[test]
fn shard_names_must_be_plain_file_names_next_to_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let index = write_sharded(dir.path());
    let original = std::fs::read_to_string(&index).unwrap();
    let policy = QuantPolicy::four_bit(StorageDtype::F16);
    // A subdirectory inside the checkpoint holding a real copy of the shard: still refused, so
    // that no symbolic link to a directory can redirect a shard.
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::copy(
        dir.path().join("model-00002-of-00002.safetensors"),
        dir.path().join("sub/model-00002-of-00002.safetensors"),
    )
    .unwrap();
    let absolute = dir.path().join("model-00002-of-00002.safetensors");
    for bad in [
        "sub/model-00002-of-00002.safetensors",
        "..\\model-00002-of-00002.safetensors",
        ".model-00002-of-00002.safetensors",
        "",
        absolute.to_str().unwrap(),
    ] {
        let text = original.replace(
            "\"model-00002-of-00002.safetensors\"",
            &serde_json::to_string(bad).unwrap(),
        );
        std::fs::write(&index, text).unwrap();
        let err = estimate_checkpoint(&index, &policy).unwrap_err();
        // The error names the index, a key mapped to the shard, and the shard as written.
        assert!(
            matches!(&err, MemoryError::InvalidIndex { reason, .. }
                if reason.contains("weight_map[`") && reason.contains(&format!("= `{bad}`"))),
            "{bad}: {err:?}"
        );
        assert_names_file(&err, &index);
        let err = surveil_memory::checkpoint::shard_paths(&index).unwrap_err();
        assert!(matches!(err, MemoryError::InvalidIndex { .. }), "{err:?}");
    }
    // A value that is not a string names its key.
    let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
    json["weight_map"]["lm_head.weight"] = 7.into();
    std::fs::write(&index, serde_json::to_vec(&json).unwrap()).unwrap();
    let err = ShardIndex::read(&index).unwrap_err();
    assert!(
        err.to_string()
            .contains("weight_map[`lm_head.weight`] is a number"),
        "{err}"
    );
    // An index over the size limit is refused before it is read (sparse file).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap();
    f.set_len(MAX_INDEX_BYTES + 1).unwrap();
    let err = estimate_checkpoint(&index, &policy).unwrap_err();
    assert!(
        matches!(&err, MemoryError::InvalidIndex { reason, .. } if reason.contains("exceeds the limit")),
        "{err:?}"
    );
}

#[test]
fn a_directory_holding_both_prefers_the_single_file() {
    let dir = tempfile::tempdir().unwrap();
    write_sharded(dir.path());
    let single: Vec<(&str, Vec<usize>)> = vec![("only.weight", vec![4, 4])];
    write_checkpoint(&dir.path().join("model.safetensors"), &single);
    assert_eq!(
        surveil_memory::checkpoint::checkpoint_file(dir.path()),
        Some(dir.path().join("model.safetensors"))
    );
    let header = CheckpointHeader::read(dir.path()).unwrap();
    assert_eq!(header.tensors.len(), 1);
    assert_eq!(header.tensors[0].name, "only.weight");
    // The byte range of a tensor in its file.
    let t = &header.tensors[0];
    let range = t.file_range();
    assert_eq!(range.end - range.start, 4 * 4 * 2);
    let bytes = std::fs::read(&t.file).unwrap();
    assert_eq!(range.end, bytes.len() as u64);
}
