//! Bounded property tests of the safetensors header reader and the sharded-checkpoint index
//! reader: arbitrary bytes and structured mutations of valid headers (wrong lengths, huge
//! counts, offsets out of range or overlapping, overflowing shapes, bad dtypes, non-UTF-8,
//! shards named `../x` or `/abs/x`) never panic, never allocate more than the input warrants,
//! and give either an error naming the file or a header whose numbers add up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use surveil_memory::checkpoint::read_safetensors_header;
use surveil_memory::{estimate_header, CheckpointHeader, QuantPolicy, StorageDtype};

/// The system allocator, remembering the largest single request of each thread, so a property
/// can check that a reader never sizes a buffer from an untrusted length field.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping only touches a
// const-initialised thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// Any allocation above this while reading a file of a few KiB sizes a buffer from a claimed
/// length instead of the real one.
const ALLOCATION_LIMIT: usize = 1 << 20;

/// `cases` per property, or `PROPTEST_CASES` when set (for a longer run by hand).
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(cases),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One tensor entry as written into a header, numbers kept wide so that negative and
/// beyond-u64 values can be written too.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<i128>,
    offsets: [i128; 2],
}

/// Byte size of the dtypes a valid header is built from.
fn dtype_size(dtype: &str) -> Option<i128> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" => 1,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "F32" | "I32" | "U32" => 4,
        "F64" | "I64" | "U64" | "C64" => 8,
        _ => return None,
    })
}

const VALID_DTYPES: &[&str] = &["F32", "F16", "BF16", "U8", "I64", "BOOL", "F8_E4M3", "C64"];

/// dtype strings a corrupt or future header might hold.
const ODD_DTYPES: &[&str] = &[
    "F4", "F6_E2M3", "F33", "f32", "", "U8 ", "💥", "F8_E8M0", "Q4K", "\u{0}",
];

/// Tensor names, including the reserved `__metadata__` key and names that need escaping.
const NAMES: &[&str] = &[
    "model.embed_tokens.weight",
    "model.layers.0.mlp.down_proj.weight",
    "lm_head.weight",
    "a",
    "",
    "__metadata__",
    "é\"\\\n",
];

/// Builds a valid header for `specs`: contiguous offsets in the given order, zeroed data.
fn valid_entries(specs: &[(String, String, Vec<i128>)]) -> Vec<Entry> {
    let mut start = 0i128;
    let mut out = Vec::new();
    for (name, dtype, shape) in specs {
        let bytes = shape.iter().product::<i128>() * dtype_size(dtype).unwrap_or(1);
        out.push(Entry {
            name: name.clone(),
            dtype: dtype.clone(),
            shape: shape.clone(),
            offsets: [start, start + bytes],
        });
        start += bytes;
    }
    out
}

fn header_json(entries: &[Entry], metadata: Option<&str>) -> String {
    let mut parts = Vec::new();
    if let Some(m) = metadata {
        parts.push(format!("\"__metadata__\":{m}"));
    }
    for e in entries {
        let shape: Vec<String> = e.shape.iter().map(i128::to_string).collect();
        parts.push(format!(
            "{}:{{\"dtype\":{},\"shape\":[{}],\"data_offsets\":[{},{}]}}",
            serde_json::to_string(&e.name).unwrap(),
            serde_json::to_string(&e.dtype).unwrap(),
            shape.join(","),
            e.offsets[0],
            e.offsets[1]
        ));
    }
    format!("{{{}}}", parts.join(","))
}

/// The data-section length a list of entries claims (the largest end offset, clamped to a
/// size that can be written).
fn data_len(entries: &[Entry]) -> usize {
    entries
        .iter()
        .map(|e| e.offsets[1].clamp(0, 4096) as usize)
        .max()
        .unwrap_or(0)
}

fn file_bytes(header: &[u8], declared_len: u64, data_len: usize) -> Vec<u8> {
    let mut bytes = declared_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.resize(bytes.len() + data_len, 0);
    bytes
}

/// A corruption applied to a valid file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Replace the 8-byte header length.
    HeaderLen(u64),
    /// Shift the header length by a small amount.
    HeaderLenDelta(i64),
    /// Cut the file after this fraction (per mille) of its bytes.
    Truncate(u16),
    /// Append bytes after the data section.
    Pad(u16),
    /// Replace a tensor's dtype.
    Dtype(usize, String),
    /// Replace one dimension of a tensor.
    Dim(usize, usize, i128),
    /// Append a dimension to a tensor.
    PushDim(usize, i128),
    /// Replace a tensor's offsets.
    Offsets(usize, [i128; 2]),
    /// Swap a tensor's start and end.
    Reverse(usize),
    /// Give a tensor the same range as another one.
    Overlap(usize, usize),
    /// Rename a tensor.
    Rename(usize, String),
    /// Replace a header byte (non-UTF-8, broken JSON).
    Byte(usize, u8),
    /// Write this `__metadata__` value.
    Metadata(String),
}

fn wide_number() -> impl Strategy<Value = i128> {
    prop_oneof![
        4 => 0i128..16,
        1 => Just(-1i128),
        1 => Just(1i128 << 32),
        1 => Just(1i128 << 62),
        1 => Just(u64::MAX as i128),
        1 => Just(u64::MAX as i128 + 1),
        1 => Just((1i128 << 61) - 1),
        1 => any::<u64>().prop_map(i128::from),
        1 => any::<i64>().prop_map(i128::from),
    ]
}

fn dtype() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(VALID_DTYPES).prop_map(str::to_string),
        2 => prop::sample::select(ODD_DTYPES).prop_map(str::to_string),
        1 => "[A-Z0-9_]{0,8}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<u64>().prop_map(Mutation::HeaderLen),
        (-16i64..16).prop_map(Mutation::HeaderLenDelta),
        (0u16..1000).prop_map(Mutation::Truncate),
        (1u16..64).prop_map(Mutation::Pad),
        (0usize..8, dtype()).prop_map(|(i, d)| Mutation::Dtype(i, d)),
        (0usize..8, 0usize..4, wide_number()).prop_map(|(i, d, v)| Mutation::Dim(i, d, v)),
        (0usize..8, wide_number()).prop_map(|(i, v)| Mutation::PushDim(i, v)),
        (0usize..8, wide_number(), wide_number())
            .prop_map(|(i, a, b)| Mutation::Offsets(i, [a, b])),
        (0usize..8).prop_map(Mutation::Reverse),
        (0usize..8, 0usize..8).prop_map(|(i, j)| Mutation::Overlap(i, j)),
        (0usize..8, prop::sample::select(NAMES))
            .prop_map(|(i, n)| Mutation::Rename(i, n.to_string())),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        prop::sample::select(
            &[
                "{\"format\":\"pt\"}",
                "null",
                "{\"a\":1}",
                "[]",
                "\"x\"",
                "{\"k\":\"\\ud800\"}",
            ][..]
        )
        .prop_map(|m| Mutation::Metadata(m.to_string())),
    ]
}

fn tensor_specs() -> impl Strategy<Value = Vec<(String, String, Vec<i128>)>> {
    prop::collection::vec(
        (
            "[a-z.0-9_]{1,24}",
            prop::sample::select(VALID_DTYPES).prop_map(str::to_string),
            prop::collection::vec(0i128..6, 0..4),
        ),
        0..6,
    )
}

/// A valid file, then corrupted: returns the bytes and the entries as finally written.
fn mutated_file(
    specs: &[(String, String, Vec<i128>)],
    mutations: &[Mutation],
) -> (Vec<u8>, Vec<Entry>) {
    let mut entries = valid_entries(specs);
    let mut metadata = Some("{\"format\":\"pt\"}".to_string());
    let n = entries.len().max(1);
    for m in mutations {
        match m {
            Mutation::Dtype(i, d) => {
                if let Some(e) = entries.get_mut(i % n) {
                    e.dtype = d.clone();
                }
            }
            Mutation::Dim(i, d, v) => {
                if let Some(e) = entries.get_mut(i % n) {
                    match e.shape.get_mut(*d) {
                        Some(dim) => *dim = *v,
                        None => e.shape.push(*v),
                    }
                }
            }
            Mutation::PushDim(i, v) => {
                if let Some(e) = entries.get_mut(i % n) {
                    e.shape.push(*v);
                }
            }
            Mutation::Offsets(i, o) => {
                if let Some(e) = entries.get_mut(i % n) {
                    e.offsets = *o;
                }
            }
            Mutation::Reverse(i) => {
                if let Some(e) = entries.get_mut(i % n) {
                    e.offsets.swap(0, 1);
                }
            }
            Mutation::Overlap(i, j) => {
                if let Some(o) = entries.get(j % n).map(|e| e.offsets) {
                    if let Some(e) = entries.get_mut(i % n) {
                        e.offsets = o;
                    }
                }
            }
            Mutation::Rename(i, name) => {
                if let Some(e) = entries.get_mut(i % n) {
                    e.name = name.clone();
                }
            }
            Mutation::Metadata(text) => metadata = Some(text.clone()),
            _ => {}
        }
    }
    let mut header = header_json(&entries, metadata.as_deref()).into_bytes();
    let mut declared = header.len() as u64;
    let mut data = data_len(&entries);
    let mut truncate = None;
    for m in mutations {
        match m {
            Mutation::HeaderLen(v) => declared = *v,
            Mutation::HeaderLenDelta(d) => declared = declared.saturating_add_signed(*d),
            Mutation::Truncate(per_mille) => truncate = Some(*per_mille),
            Mutation::Pad(extra) => data += usize::from(*extra),
            Mutation::Byte(pos, b) if !header.is_empty() => {
                let len = header.len();
                header[pos % len] = *b;
            }
            _ => {}
        }
    }
    let mut bytes = file_bytes(&header, declared, data);
    if let Some(per_mille) = truncate {
        bytes.truncate(bytes.len() * usize::from(per_mille) / 1000);
    }
    (bytes, entries)
}

/// Bytes per element of the byte-sized safetensors dtypes.
fn known_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// Reads `bytes` as a safetensors file and checks everything a caller may rely on.
fn check_file(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = dir.join("fuzzed.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let (result, largest) = largest_allocation(|| read_safetensors_header(&path));
    prop_assert!(
        largest <= ALLOCATION_LIMIT,
        "reading a {}-byte file allocated {largest} bytes at once",
        bytes.len()
    );
    let header = match result {
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.contains("fuzzed.safetensors"), "{msg}");
            return Ok(());
        }
        Ok(h) => h,
    };
    let file_len = bytes.len() as u64;
    prop_assert_eq!(header.file_len, file_len);
    prop_assert!(8 + header.header_len <= file_len);
    let data_len = file_len - 8 - header.header_len;
    let mut spans = Vec::new();
    for t in &header.tensors {
        let elements = t
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64));
        prop_assert!(
            elements.is_some(),
            "{} {:?}: element count overflows u64 yet the header was accepted",
            t.name,
            t.shape
        );
        let elements = elements.unwrap_or(0);
        prop_assert!(t.stored_bytes <= data_len);
        match known_size(&t.dtype) {
            Some(size) => prop_assert_eq!(
                elements.checked_mul(size),
                Some(t.stored_bytes),
                "{} {} {:?}",
                t.name,
                t.dtype,
                t.shape
            ),
            // Every dtype takes at least one bit per element.
            None => prop_assert!(
                elements <= t.stored_bytes.saturating_mul(8),
                "{} {} {:?} in {} bytes",
                t.name,
                t.dtype,
                t.shape,
                t.stored_bytes
            ),
        }
        spans.push(t.stored_bytes);
    }
    let total: u64 = spans.iter().sum();
    prop_assert!(
        total <= data_len,
        "tensors claim {total} bytes of a {data_len}-byte data section (overlapping ranges)"
    );
    let checkpoint = CheckpointHeader {
        source: path.clone(),
        files: vec![path.clone()],
        tensors: header.tensors.clone(),
        metadata: header.metadata.clone(),
    };
    for policy in [
        QuantPolicy::four_bit(StorageDtype::F16),
        QuantPolicy::unquantized(StorageDtype::F32),
    ] {
        let estimate = estimate_header(&checkpoint, &policy);
        // f32 storage is at most 4 bytes per element, and elements are at most 8 per byte.
        prop_assert!(estimate.total_bytes <= 32 * data_len);
        prop_assert_eq!(estimate.stored_bytes, Some(total));
    }
    Ok(())
}

/// Whether the reference implementation can be asked about `entries` without tripping its own
/// debug-build overflow check (it adds the end offsets to the header length unchecked).
fn reference_can_read(entries: &[Entry], file_len: usize) -> bool {
    entries
        .iter()
        .all(|e| e.offsets[1] <= file_len as i128 && e.offsets[0] <= file_len as i128)
}

/// Whatever the reference `safetensors` crate accepts, this reader accepts with the same
/// tensors.
fn check_against_reference(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok((_, metadata)) = safetensors::SafeTensors::read_metadata(bytes) else {
        return Ok(());
    };
    let path = dir.join("reference.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let ours = read_safetensors_header(&path);
    prop_assert!(
        ours.is_ok(),
        "reference accepts, we refuse: {:?}",
        ours.err()
    );
    let ours = ours.unwrap();
    let theirs = metadata.tensors();
    prop_assert_eq!(ours.tensors.len(), theirs.len());
    for t in &ours.tensors {
        let info = theirs.get(&t.name);
        prop_assert!(info.is_some(), "{} missing in the reference", t.name);
        let info = info.unwrap();
        prop_assert_eq!(&t.shape, &info.shape);
        prop_assert_eq!(&t.dtype, &info.dtype.to_string());
        let (s, e) = info.data_offsets;
        prop_assert_eq!(t.stored_bytes, (e - s) as u64);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes, raw or behind a plausible length prefix.
    #[test]
    fn fuzz_header_arbitrary_bytes(
        raw in prop::collection::vec(any::<u8>(), 0..256),
        text in ".{0,200}",
        delta in -4i64..4,
        prefixed in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = if prefixed {
            let declared = (text.len() as u64).saturating_add_signed(delta);
            let mut b = declared.to_le_bytes().to_vec();
            b.extend_from_slice(text.as_bytes());
            b.extend_from_slice(&raw);
            b
        } else {
            raw
        };
        check_file(dir.path(), &bytes)?;
        check_against_reference(dir.path(), &bytes)?;
    }

    /// Valid headers with up to four corruptions each.
    #[test]
    fn fuzz_header_structured_mutations(
        specs in tensor_specs(),
        mutations in prop::collection::vec(mutation(), 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, entries) = mutated_file(&specs, &mutations);
        check_file(dir.path(), &bytes)?;
        if reference_can_read(&entries, bytes.len()) {
            check_against_reference(dir.path(), &bytes)?;
        }
        if mutations.is_empty() {
            // Untouched, the file is valid and every tensor is listed.
            let header = read_safetensors_header(&dir.path().join("fuzzed.safetensors"));
            prop_assert!(header.is_ok(), "{:?}", header.err());
            let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            prop_assert_eq!(header.unwrap().tensors.len(), names.len());
        }
    }
}

/// Shard names an index may hold: plain names of files that exist, missing files, and names
/// that would leave the index's directory.
const SHARD_NAMES: &[&str] = &[
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "missing.safetensors",
    "../outside.safetensors",
    "sub/../../outside.safetensors",
    "sub/inner.safetensors",
    "./model-00001-of-00002.safetensors",
    "model-00001-of-00002.safetensors/",
    "",
    ".",
    "..",
    "sub",
    "\u{0}",
    "é.safetensors",
];

/// Writes a small valid safetensors file with these tensors (2 f32 each).
fn write_shard(path: &Path, names: &[&str]) {
    let specs: Vec<(String, String, Vec<i128>)> = names
        .iter()
        .map(|n| (n.to_string(), "F32".to_string(), vec![2]))
        .collect();
    let (bytes, _) = mutated_file(&specs, &[]);
    std::fs::write(path, bytes).unwrap();
}

const TENSORS: &[&str] = &["a", "b", "c", "d"];

/// A checkpoint directory `root/ckpt` with two shards and `root/ckpt/sub/inner.safetensors`,
/// plus `root/outside.safetensors` next to it that holds every tensor (so escaping to it
/// would succeed if it were allowed).
fn checkpoint_tree(root: &Path) -> PathBuf {
    let dir = root.join("ckpt");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    write_shard(&dir.join("model-00001-of-00002.safetensors"), &["a", "b"]);
    write_shard(&dir.join("model-00002-of-00002.safetensors"), &["c", "d"]);
    write_shard(&dir.join("sub/inner.safetensors"), &["a", "c"]);
    write_shard(&root.join("outside.safetensors"), TENSORS);
    dir
}

fn check_index(dir: &Path, outside: &Path, text: &[u8]) -> Result<(), TestCaseError> {
    let index = dir.join("model.safetensors.index.json");
    std::fs::write(&index, text).unwrap();
    let (result, largest) = largest_allocation(|| CheckpointHeader::read(&index));
    prop_assert!(largest <= ALLOCATION_LIMIT, "allocated {largest} bytes");
    let header = match result {
        Err(e) => {
            prop_assert!(!e.to_string().is_empty());
            return Ok(());
        }
        Ok(h) => h,
    };
    let root = dir.canonicalize().unwrap();
    for f in &header.files {
        let real = f.canonicalize().unwrap();
        prop_assert!(
            real.starts_with(&root),
            "{} escapes {}",
            real.display(),
            root.display()
        );
        prop_assert!(real != outside.canonicalize().unwrap());
    }
    for t in &header.tensors {
        prop_assert!(t.file.canonicalize().unwrap().starts_with(&root));
    }
    Ok(())
}

fn weight_map_json(map: &[(usize, usize)], absolute: &Path) -> String {
    let entries: Vec<String> = map
        .iter()
        .map(|&(t, s)| {
            let shard = if s == SHARD_NAMES.len() {
                absolute.display().to_string()
            } else {
                SHARD_NAMES[s].to_string()
            };
            format!(
                "{}:{}",
                serde_json::to_string(TENSORS[t]).unwrap(),
                serde_json::to_string(&shard).unwrap()
            )
        })
        .collect();
    format!(
        "{{\"metadata\":{{}},\"weight_map\":{{{}}}}}",
        entries.join(",")
    )
}

proptest! {
    #![proptest_config(config(256))]

    /// Indexes mapping tensors to arbitrary shard names, including `../` and absolute paths:
    /// an accepted index only ever reads files inside its own directory.
    #[test]
    fn fuzz_index_shard_names(
        map in prop::collection::vec((0..TENSORS.len(), 0..=SHARD_NAMES.len()), 0..6),
        cut in prop::option::of(0usize..200),
    ) {
        let root = tempfile::tempdir().unwrap();
        let dir = checkpoint_tree(root.path());
        let outside = root.path().join("outside.safetensors");
        let mut text = weight_map_json(&map, &outside).into_bytes();
        let full_len = text.len();
        if let Some(cut) = cut {
            text.truncate(cut);
        }
        check_index(&dir, &outside, &text)?;
        let result = CheckpointHeader::read(&dir.join("model.safetensors.index.json"));
        // Known answers: a cut index is not JSON; a name with `..`, `.`, a root or nothing in
        // it is refused; plain names of the shards that hold the tensors are read. A tensor
        // listed twice keeps its last shard, as in any JSON object.
        let effective: std::collections::BTreeMap<usize, usize> = map.iter().copied().collect();
        let shards: Vec<&str> = effective
            .values()
            .map(|&s| SHARD_NAMES.get(s).copied().unwrap_or("/absolute"))
            .collect();
        if text.len() < full_len {
            prop_assert!(result.is_err(), "a cut index was accepted");
        } else if shards.iter().any(|s| {
            s.is_empty() || s.starts_with('/') || s.split('/').any(|c| c == ".." || c == ".")
        }) {
            prop_assert!(result.is_err(), "{:?} accepted", shards);
        } else if !effective.is_empty()
            && effective
                .iter()
                .all(|(&t, &s)| (s == 0 && t < 2) || (s == 1 && t >= 2))
        {
            let header = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
            let names: Vec<&str> = effective.keys().map(|&t| TENSORS[t]).collect();
            let got: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
            prop_assert_eq!(got, names);
        }
    }

    /// Arbitrary bytes and JSON of the wrong shape as an index.
    #[test]
    fn fuzz_index_arbitrary_bytes(
        raw in prop::collection::vec(any::<u8>(), 0..200),
        json in prop::sample::select(&[
            "{}",
            "[]",
            "null",
            "{\"weight_map\":{}}",
            "{\"weight_map\":[]}",
            "{\"weight_map\":{\"a\":1}}",
            "{\"weight_map\":{\"a\":null}}",
            "{\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\",\"a\":\"x\"}}",
            "{\"weight_map\":{\"zzz\":\"model-00001-of-00002.safetensors\"}}",
        ][..]),
        use_json in any::<bool>(),
    ) {
        let root = tempfile::tempdir().unwrap();
        let dir = checkpoint_tree(root.path());
        let outside = root.path().join("outside.safetensors");
        let text = if use_json { json.as_bytes().to_vec() } else { raw };
        check_index(&dir, &outside, &text)?;
    }
}

/// A file with this header JSON and `data_len` zero bytes of data.
fn raw_file(dir: &Path, header: &str, data_len: usize) -> PathBuf {
    let path = dir.join("regression.safetensors");
    std::fs::write(
        &path,
        file_bytes(header.as_bytes(), header.len() as u64, data_len),
    )
    .unwrap();
    path
}

fn invalid_tensor_reason(path: &Path) -> (String, String) {
    match read_safetensors_header(path) {
        Err(surveil_memory::MemoryError::InvalidTensor { tensor, reason, .. }) => (tensor, reason),
        other => panic!("expected InvalidTensor, got {other:?}"),
    }
}

/// Found by `fuzz_header_structured_mutations`: `"__metadata__": null` is accepted by the
/// reference implementation (no metadata) and was refused here as invalid JSON.
#[test]
fn fuzz_regression_null_metadata_means_none() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"__metadata__":null,"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let path = raw_file(dir.path(), header, 4);
    assert!(safetensors::SafeTensors::read_metadata(&std::fs::read(&path).unwrap()).is_ok());
    let read = read_safetensors_header(&path).unwrap();
    assert!(read.metadata.is_empty());
    assert_eq!(read.tensors.len(), 1);
    assert_eq!(read.tensors[0].stored_bytes, 4);
}

/// Found by `fuzz_header_structured_mutations`: a shape whose byte size overflows 64 bits
/// skipped the size check, was accepted, and made the estimate panic on a multiplication
/// overflow.
#[test]
fn fuzz_regression_overflowing_shape_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for shape in ["[4611686018427387904]", "[4294967296,4294967296]"] {
        let header = format!(r#"{{"a":{{"dtype":"F32","shape":{shape},"data_offsets":[0,4]}}}}"#);
        let path = raw_file(dir.path(), &header, 4);
        let (tensor, reason) = invalid_tensor_reason(&path);
        assert_eq!(tensor, "a");
        assert!(reason.contains("64 bits"), "{shape}: {reason}");
    }
}

/// Found by `fuzz_header_structured_mutations`: a dtype this crate does not know went
/// unchecked, so four bytes could claim 2^62 elements (and the estimate overflowed).
#[test]
fn fuzz_regression_unknown_dtype_needs_a_bit_per_element() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"a":{"dtype":"F33","shape":[4611686018427387904],"data_offsets":[0,4]}}"#;
    let path = raw_file(dir.path(), header, 4);
    let (tensor, reason) = invalid_tensor_reason(&path);
    assert_eq!(tensor, "a");
    assert!(reason.contains("one bit each"), "{reason}");
    // 32 elements of an unknown type in 4 bytes is plausible (1 bit each) and accepted.
    let header = r#"{"a":{"dtype":"F33","shape":[32],"data_offsets":[0,4]}}"#;
    let path = raw_file(dir.path(), header, 4);
    assert_eq!(
        read_safetensors_header(&path).unwrap().tensors[0].stored_bytes,
        4
    );
    // Sub-byte types are known: F4 takes half a byte per element.
    let header = r#"{"a":{"dtype":"F4","shape":[8],"data_offsets":[0,4]},
        "b":{"dtype":"F4","shape":[3],"data_offsets":[4,6]}}"#;
    let path = raw_file(dir.path(), header, 6);
    let (tensor, reason) = invalid_tensor_reason(&path);
    assert_eq!(tensor, "b");
    assert!(reason.contains("not a whole number of bytes"), "{reason}");
}

/// Found by `fuzz_header_structured_mutations`: two tensors sharing one byte range were
/// accepted, so the header claimed more stored bytes than the file holds.
#[test]
fn fuzz_regression_overlapping_ranges_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
        "b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let path = raw_file(dir.path(), header, 4);
    let (tensor, reason) = invalid_tensor_reason(&path);
    assert!(tensor == "a" || tensor == "b", "{tensor}");
    assert!(reason.contains("overlap"), "{reason}");
    // An empty range inside another one overlaps too (the reference refuses it as well).
    let header = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
        "b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}"#;
    let path = raw_file(dir.path(), header, 8);
    assert!(safetensors::SafeTensors::read_metadata(&std::fs::read(&path).unwrap()).is_err());
    let (tensor, reason) = invalid_tensor_reason(&path);
    assert_eq!(tensor, "b");
    assert!(reason.contains("overlap"), "{reason}");
    // Adjacent ranges are fine.
    let header = r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},
        "b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#;
    let path = raw_file(dir.path(), header, 8);
    assert_eq!(read_safetensors_header(&path).unwrap().tensors.len(), 2);
}
