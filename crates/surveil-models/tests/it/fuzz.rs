//! Bounded property tests of the loader's safetensors reader ([`SafetensorsSource`]) and its
//! index reader ([`shard_paths`]): arbitrary bytes and corrupted headers (huge counts and
//! shapes, offsets out of range, bad dtypes, non-UTF-8) and indexes naming `../` or absolute
//! shards never panic, never allocate more than the file warrants, and either give an error or
//! a source whose every tensor loads with the shape and byte size its header states, agreeing
//! with the checkpoint reader the memory estimate uses.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use candle_core::Device;
use proptest::prelude::*;
use surveil_memory::checkpoint::{read_safetensors_header, shard_paths};
use surveil_models::load::weights::{SafetensorsSource, TensorSource};

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

/// One tensor entry as written into a header; numbers are wide so that negative and beyond-u64
/// values can be written too.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    dtype: String,
    shape: Vec<i128>,
    offsets: [i128; 2],
}

fn dtype_size(dtype: &str) -> i128 {
    match dtype {
        "U8" | "BOOL" => 1,
        "F16" | "BF16" => 2,
        "F32" | "U32" => 4,
        _ => 8,
    }
}

/// dtypes the loader materialises.
const VALID_DTYPES: &[&str] = &["F32", "F16", "BF16", "U8", "I64", "U32", "F64"];
/// dtypes it refuses to materialise, and names no safetensors file uses.
const ODD_DTYPES: &[&str] = &[
    "BOOL", "F4", "F6_E2M3", "F8_E4M3", "C64", "F33", "f32", "", "💥",
];

fn header_json(entries: &[Entry], metadata: &str) -> String {
    let mut parts = vec![format!("\"__metadata__\":{metadata}")];
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

/// The bytes of a file: length prefix, header, `data_len` bytes of data (a repeating ramp, so
/// that loaded values are checkable).
fn file_bytes(header: &[u8], declared_len: u64, data_len: usize) -> Vec<u8> {
    let mut bytes = declared_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend((0..data_len).map(|i| (i % 251) as u8));
    bytes
}

#[derive(Debug, Clone)]
enum Mutation {
    HeaderLen(u64),
    HeaderLenDelta(i64),
    Truncate(u16),
    Pad(u16),
    Dtype(usize, String),
    Dim(usize, usize, i128),
    PushDim(usize, i128),
    Offsets(usize, [i128; 2]),
    Overlap(usize, usize),
    Byte(usize, u8),
    Metadata(&'static str),
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
    ]
}

fn dtype() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(VALID_DTYPES).prop_map(str::to_string),
        1 => prop::sample::select(ODD_DTYPES).prop_map(str::to_string),
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
        (0usize..8, 0usize..8).prop_map(|(i, j)| Mutation::Overlap(i, j)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        prop::sample::select(&["null", "{}", "{\"a\":1}", "[]"][..]).prop_map(Mutation::Metadata),
    ]
}

fn tensor_specs() -> impl Strategy<Value = Vec<(String, String, Vec<i128>)>> {
    prop::collection::vec(
        (
            "[a-z.0-9_]{1,16}",
            prop::sample::select(VALID_DTYPES).prop_map(str::to_string),
            prop::collection::vec(0i128..5, 0..4),
        ),
        0..5,
    )
}

/// A valid file (contiguous offsets in the given order), then corrupted.
fn mutated_file(specs: &[(String, String, Vec<i128>)], mutations: &[Mutation]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut start = 0i128;
    for (name, dtype, shape) in specs {
        let bytes = shape.iter().product::<i128>() * dtype_size(dtype);
        entries.push(Entry {
            name: name.clone(),
            dtype: dtype.clone(),
            shape: shape.clone(),
            offsets: [start, start + bytes],
        });
        start += bytes;
    }
    let mut metadata = "{\"format\":\"pt\"}";
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
            Mutation::Overlap(i, j) => {
                if let Some(o) = entries.get(j % n).map(|e| e.offsets) {
                    if let Some(e) = entries.get_mut(i % n) {
                        e.offsets = o;
                    }
                }
            }
            Mutation::Metadata(m) => metadata = m,
            _ => {}
        }
    }
    let mut header = header_json(&entries, metadata).into_bytes();
    let mut declared = header.len() as u64;
    let mut data = entries
        .iter()
        .map(|e| e.offsets[1].clamp(0, 4096) as usize)
        .max()
        .unwrap_or(0);
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
    bytes
}

/// Bytes per element of the dtypes the loader materialises.
fn candle_size(dtype: candle_core::DType) -> usize {
    dtype.size_in_bytes()
}

/// Opens `bytes` as a one-file checkpoint and loads every tensor it lists.
fn check_file(dir: &Path, bytes: &[u8]) -> Result<(), TestCaseError> {
    let path = dir.join("fuzzed.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let (opened, largest) = largest_allocation(|| SafetensorsSource::open(&[&path]));
    prop_assert!(
        largest <= ALLOCATION_LIMIT,
        "opening a {}-byte file allocated {largest} bytes at once",
        bytes.len()
    );
    let source = match opened {
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.contains("fuzzed.safetensors"), "{msg}");
            return Ok(());
        }
        Ok(s) => s,
    };
    // The memory estimate reads the same file with its own header reader: it must accept
    // what the loader accepts and see the same tensors.
    let header = read_safetensors_header(&path);
    prop_assert!(
        header.is_ok(),
        "the loader accepts the file, the estimate refuses it: {:?}",
        header.err()
    );
    let header = header.unwrap();
    let names = source.names();
    let listed: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    prop_assert_eq!(&names, &listed);
    for t in &header.tensors {
        let meta = source.meta(&t.name);
        prop_assert!(meta.is_some());
        let meta = meta.unwrap();
        prop_assert_eq!(&meta.shape, &t.shape);
        let (loaded, largest) = largest_allocation(|| source.load(&t.name, &Device::Cpu));
        prop_assert!(
            largest <= ALLOCATION_LIMIT,
            "loading {} allocated {largest}",
            t.name
        );
        if let Ok(tensor) = loaded {
            prop_assert_eq!(tensor.dims(), t.shape.as_slice());
            prop_assert_eq!(
                (tensor.elem_count() * candle_size(tensor.dtype())) as u64,
                t.stored_bytes
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    /// Arbitrary bytes, raw or behind a plausible length prefix.
    #[test]
    fn fuzz_source_arbitrary_bytes(
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
    }

    /// Valid headers with up to four corruptions each; untouched ones with distinct names load.
    #[test]
    fn fuzz_source_structured_mutations(
        specs in tensor_specs(),
        mutations in prop::collection::vec(mutation(), 0..4),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let bytes = mutated_file(&specs, &mutations);
        check_file(dir.path(), &bytes)?;
        let mut names: Vec<&str> = specs.iter().map(|(n, _, _)| n.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        // Untouched and with distinct names (a repeated JSON key keeps only its last entry,
        // which leaves a gap the reference reader refuses), the file loads.
        if mutations.is_empty() && names.len() == specs.len() {
            let source = SafetensorsSource::open(&[dir.path().join("fuzzed.safetensors")]);
            prop_assert!(source.is_ok(), "{:?}", source.err().map(|e| e.to_string()));
            let source = source.unwrap();
            for name in source.names() {
                let loaded = source.load(&name, &Device::Cpu);
                prop_assert!(loaded.is_ok(), "{name}: {:?}", loaded.err().map(|e| e.to_string()));
            }
        }
    }

    /// Many tensors of the largest sizes a header can state, offsets chained end to end: the
    /// sum of their sizes runs past 64 bits.
    #[test]
    fn fuzz_source_huge_chained_tensors(
        count in 1usize..12,
        elements in prop::sample::select(&[
            (1u64 << 61) - 1,
            1u64 << 60,
            (1u64 << 63) / 4,
            u64::MAX / 8,
        ][..]),
        data_len in 0usize..64,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut entries = Vec::new();
        let mut start = 0i128;
        for i in 0..count {
            let end = start + i128::from(elements);
            entries.push(Entry {
                name: format!("t{i:02}"),
                dtype: "U8".into(),
                shape: vec![i128::from(elements)],
                offsets: [start, end],
            });
            start = end;
        }
        let header = header_json(&entries, "{}").into_bytes();
        let bytes = file_bytes(&header, header.len() as u64, data_len);
        check_file(dir.path(), &bytes)?;
        prop_assert!(SafetensorsSource::open(&[dir.path().join("fuzzed.safetensors")]).is_err());
    }
}

/// Shard names an index may hold.
const SHARD_NAMES: &[&str] = &[
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
    "missing.safetensors",
    "../outside.safetensors",
    "sub/../../outside.safetensors",
    "..\\outside.safetensors",
    "./model-00001-of-00002.safetensors",
    "",
    ".",
    "..",
    "\u{0}",
];

/// `root/ckpt` with two shards, and `root/outside.safetensors` that must never be opened.
fn checkpoint_tree(root: &Path) -> PathBuf {
    let dir = root.join("ckpt");
    std::fs::create_dir_all(&dir).unwrap();
    let specs = |names: &[&str]| -> Vec<(String, String, Vec<i128>)> {
        names
            .iter()
            .map(|n| (n.to_string(), "F32".to_string(), vec![2]))
            .collect()
    };
    let write = |path: PathBuf, names: &[&str]| {
        std::fs::write(path, mutated_file(&specs(names), &[])).unwrap();
    };
    write(dir.join("model-00001-of-00002.safetensors"), &["a", "b"]);
    write(dir.join("model-00002-of-00002.safetensors"), &["c", "d"]);
    write(root.join("outside.safetensors"), &["a", "b", "c", "d"]);
    dir
}

proptest! {
    #![proptest_config(config(256))]

    /// Index files mapping tensors to arbitrary shard names (`../`, absolute, empty), cut short,
    /// or arbitrary bytes: an accepted index names only existing files inside its directory.
    #[test]
    fn fuzz_shard_paths(
        map in prop::collection::vec((0usize..4, 0..=SHARD_NAMES.len()), 0..6),
        cut in prop::option::of(0usize..200),
        raw in prop::option::of(prop::collection::vec(any::<u8>(), 0..200)),
    ) {
        let root = tempfile::tempdir().unwrap();
        let dir = checkpoint_tree(root.path());
        let outside = root.path().join("outside.safetensors");
        let entries: Vec<String> = map
            .iter()
            .map(|&(t, s)| {
                let shard = SHARD_NAMES
                    .get(s)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| outside.display().to_string());
                format!("\"{}\":{}", ["a", "b", "c", "d"][t], serde_json::to_string(&shard).unwrap())
            })
            .collect();
        let mut text = format!("{{\"weight_map\":{{{}}}}}", entries.join(",")).into_bytes();
        if let Some(cut) = cut {
            text.truncate(cut);
        }
        if let Some(raw) = raw {
            text = raw;
        }
        let index = dir.join("model.safetensors.index.json");
        std::fs::write(&index, &text).unwrap();
        let (result, largest) = largest_allocation(|| shard_paths(&index));
        prop_assert!(largest <= ALLOCATION_LIMIT, "allocated {largest} bytes");
        if let Ok(paths) = result {
            let root_dir = dir.canonicalize().unwrap();
            for p in &paths {
                prop_assert!(p.is_file(), "{} does not exist", p.display());
                let real = p.canonicalize().unwrap();
                prop_assert!(real.starts_with(&root_dir), "{} escapes", real.display());
            }
            // And the source opens them all, or says why not.
            let _ = SafetensorsSource::open_index(&index);
        }
    }
}

/// A one-file checkpoint with this header JSON and `data_len` bytes of data.
fn raw_file(dir: &Path, header: &str, data_len: usize) -> PathBuf {
    let path = dir.join("regression.safetensors");
    std::fs::write(
        &path,
        file_bytes(header.as_bytes(), header.len() as u64, data_len),
    )
    .unwrap();
    path
}

/// Found by `fuzz_source_huge_chained_tensors` (count = 8, elements = 2^61 - 1): the reference
/// reader adds the last end offset (2^64 - 8) to the header length unchecked and panicked with
/// "attempt to add with overflow" in debug builds.
#[test]
fn fuzz_regression_offsets_summing_past_64_bits() {
    let dir = tempfile::tempdir().unwrap();
    let size = (1u64 << 61) - 1;
    let entries: Vec<String> = (0..8u64)
        .map(|i| {
            format!(
                r#""t{i}":{{"dtype":"U8","shape":[{size}],"data_offsets":[{},{}]}}"#,
                i * size,
                (i + 1) * size
            )
        })
        .collect();
    let path = raw_file(dir.path(), &format!("{{{}}}", entries.join(",")), 0);
    let err = SafetensorsSource::open(&[&path])
        .err()
        .expect("offsets past the end of the file must be refused")
        .to_string();
    assert!(
        err.contains("regression.safetensors") && err.contains("t0") && err.contains("truncated"),
        "{err}"
    );
}

/// A tensor with a zero dimension holds no bytes, but its other dimensions still give candle
/// strides: their product must fit in 64 bits.
#[test]
fn fuzz_regression_empty_tensor_with_huge_dimensions() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"t":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}}"#;
    let path = raw_file(dir.path(), header, 0);
    let source = SafetensorsSource::open(&[&path]).unwrap();
    let err = source
        .load("t", &Device::Cpu)
        .expect_err("a shape whose strides overflow must be refused")
        .to_string();
    assert!(err.contains("`t`") && err.contains("64 bits"), "{err}");
    // An empty tensor of ordinary dimensions loads.
    let header = r#"{"t":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]}}"#;
    let path = raw_file(dir.path(), header, 0);
    let source = SafetensorsSource::open(&[&path]).unwrap();
    assert_eq!(source.load("t", &Device::Cpu).unwrap().dims(), &[0, 3]);
}
