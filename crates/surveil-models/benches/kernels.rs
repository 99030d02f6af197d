//! The 4-bit CPU kernels of `surveil_models::quant` at the real linear shapes of Qwen2-VL-2B,
//! git-base and Kimi-VL, against candle's `QMatMul` on the same weights in the same run.
//!
//! ```text
//! cargo bench -p surveil-models --bench kernels                 # default set, under ~2 minutes
//! KERNELS_BENCH_FULL=1 cargo bench -p surveil-models --bench kernels   # every shape, full output heads, GEMM at m = 512
//! cargo bench -p surveil-models --bench kernels -- gemv/k1536   # criterion's name filter
//! cargo bench -p surveil-models --bench kernels -- dram          # the GEMV streaming from memory
//! ```
//!
//! For every shape (`k` = input width, `n` = outputs): our GEMV (`m = 1`, decode) or GEMM
//! (`m` rows, prefill / vision tower) with a pool of 1 and of 2 threads (in the full run also
//! with 8-bit weights, `PackedQ8`), and candle's `QMatMul`
//! in the format surveil loads today (Q4K; Q4_0 where `k` is not a multiple of 256; f16 where
//! it is not one of 32) with
//! candle's own threads (`CANDLE_NUM_THREADS`, default all cores). Besides criterion's
//! report, one line per run gives the best time per call and from it GB/s (the format's
//! stored weight bytes ÷ time; candle's x86 kernels read a repacked copy of their own) and
//! GFLOP/s (`2·m·n·k` ÷ time, comparable across formats). `pool/dispatch` is the cost of one
//! empty job on the pool as the caller sees it (a worker that has not woken up before the
//! caller took every part is not waited for); `pool/roundtrip` a job a parked worker must
//! join (wake-up and report); `activations/quantize` the 8-bit quantization of one input row;
//! `quantize/*` a load's quantization of one weight, ours (our tiles, and GGML Q4_K blocks) against candle's Q4K. Weights are
//! uniform random; the kernels' speed does not depend on the values.

use std::cell::{Cell, OnceCell};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use surveil_models::quant::{
    matmul_quantized, quantize_q4k, Kernel, PackedQ4, PackedQ8, PackedWeight, QuantizedActivations,
    ThreadPool, Q4K_BLOCK_BYTES, Q4K_BLOCK_VALUES,
};

/// `(model and linear, k, n)`; `full_only` shapes run with `KERNELS_BENCH_FULL=1`.
struct Shape {
    name: &'static str,
    k: usize,
    n: usize,
    full_only: bool,
}

const fn shape(name: &'static str, k: usize, n: usize, full_only: bool) -> Shape {
    Shape {
        name,
        k,
        n,
        full_only,
    }
}

const GEMV_SHAPES: &[Shape] = &[
    shape("qwen2vl q/o", 1536, 1536, false),
    shape("qwen2vl k/v", 1536, 256, false),
    shape("qwen2vl gate/up", 1536, 8960, false),
    shape("qwen2vl down", 8960, 1536, false),
    shape("qwen2vl lm_head", 1536, 151_936, true),
    shape("qwen2vl vision qkv", 1280, 3840, true),
    shape("qwen2vl vision fc1", 1280, 5120, true),
    shape("qwen2vl vision fc2", 5120, 1280, true),
    shape("qwen2vl merger out", 5120, 1536, true),
    shape("git attention", 768, 768, false),
    shape("git fc1", 768, 3072, true),
    shape("git fc2", 3072, 768, true),
    shape("git head", 768, 30_522, false),
    shape("kimi expert gate/up", 2048, 1408, false),
    shape("kimi expert down", 1408, 2048, false),
    shape("kimi dense gate/up", 2048, 11_264, true),
    shape("kimi dense down", 11_264, 2048, true),
    shape("kimi kv_a", 2048, 576, true),
    shape("kimi kv_b", 512, 4096, true),
    shape("kimi vision fc0", 1152, 4304, false),
    shape("kimi vision fc1", 4304, 1152, false),
    shape("kimi lm_head", 2048, 163_840, true),
];

const GEMM_SHAPES: &[Shape] = &[
    shape("qwen2vl gate/up", 1536, 8960, false),
    shape("qwen2vl down", 8960, 1536, true),
    shape("qwen2vl vision qkv", 1280, 3840, false),
    shape("qwen2vl vision fc2", 5120, 1280, true),
    shape("git fc1", 768, 3072, true),
    shape("kimi expert gate/up", 2048, 1408, true),
    shape("kimi vision fc0", 1152, 4304, false),
];

/// GEMM rows: a short prefill by default, a 512-token prefill in the full run.
fn gemm_rows(full: bool) -> usize {
    if full {
        512
    } else {
        64
    }
}

/// One shape's weights in both formats and its activations, built on first use (so a
/// criterion filter skips the setup of shapes it does not run).
struct Prepared {
    ours: PackedQ4,
    /// 8-bit weights, full mode only.
    q8: Option<PackedQ8>,
    candle: QMatMul,
    candle_format: &'static str,
    candle_bytes: usize,
    x_tensor: Tensor,
}

fn prepare(k: usize, n: usize, m: usize, with_q8: bool) -> Prepared {
    let w = random_weights(n, k, (k * 31 + n) as u64);
    let x = activations(m, k);
    let ours = PackedQ4::quantize(&w, n, k).expect("finite weights");
    let q8 = with_q8.then(|| PackedQ8::quantize(&w, n, k).expect("finite weights"));
    // What surveil loads today (`QuantPolicy::storage_for`): Q4K where rows are whole
    // 256-blocks, else Q4_0 where they are whole 32-blocks, else a float weight.
    let t = Tensor::from_vec(w, (n, k), &Device::Cpu).expect("tensor");
    let (candle, candle_format, candle_bytes) = if k.is_multiple_of(32) {
        let format = if k.is_multiple_of(256) {
            GgmlDType::Q4K
        } else {
            GgmlDType::Q4_0
        };
        let qt = QTensor::quantize(&t, format).expect("candle quantize");
        let bytes = qt.storage_size_in_bytes();
        let name = if format == GgmlDType::Q4K {
            "q4k"
        } else {
            "q4_0"
        };
        (QMatMul::from_qtensor(qt).expect("qmatmul"), name, bytes)
    } else {
        let f16 = t.to_dtype(DType::F16).expect("f16");
        (QMatMul::TensorF16(f16), "f16", n * k * 2)
    };
    drop(t);
    let x_tensor = Tensor::from_vec(x, (m, k), &Device::Cpu).expect("tensor");
    Prepared {
        ours,
        q8,
        candle,
        candle_format,
        candle_bytes,
        x_tensor,
    }
}

/// Weights `[n, k]` uniform in [−0.025, 0.025) from a xorshift generator seeded by `seed`.
fn random_weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ seed;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    (0..n * k).map(|_| 0.05 * uniform()).collect()
}

/// The activations `[m, k]` every implementation gets: deterministic, in [−1, 1).
fn activations(m: usize, k: usize) -> Vec<f32> {
    (0..m * k)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

/// Runs `f` under criterion with `iter_custom`, keeping the best time per call.
fn timed(c: &mut Criterion, id: &str, mut f: impl FnMut()) -> Option<Duration> {
    let best = Cell::new(None::<Duration>);
    c.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                f();
            }
            let total = start.elapsed();
            let per = total / iters.max(1) as u32;
            if best.get().is_none_or(|b| per < b) {
                best.set(Some(per));
            }
            total
        })
    });
    best.get()
}

/// Our matmul of `m` rows on `pool` (activation quantization included), timed.
fn time_ours<'a, W: PackedWeight + 'a>(
    c: &mut Criterion,
    id: &str,
    m: usize,
    s: &Shape,
    pool: &ThreadPool,
    weight: impl Fn() -> &'a W,
) -> Option<Duration> {
    let x = activations(m, s.k);
    let mut y = vec![0f32; m * s.n];
    let mut acts = QuantizedActivations::default();
    let kernel = Kernel::best();
    timed(c, id, || {
        let w = weight();
        acts.requantize(&x, m, s.k).expect("activations");
        matmul_quantized(kernel, w, &acts, &mut y, pool).expect("matmul");
        black_box(&y);
    })
}

fn report(id: &str, best: Option<Duration>, bytes: usize, flops: f64) {
    if let Some(t) = best {
        let s = t.as_secs_f64();
        println!(
            "{id:<58} best {:>9.1} µs  {:>6.1} GB/s  {:>7.1} GFLOP/s",
            s * 1e6,
            bytes as f64 / s / 1e9,
            flops / s / 1e9
        );
    }
}

fn run_shape(c: &mut Criterion, pools: &[ThreadPool], kind: &str, s: &Shape, m: usize, q8: bool) {
    let prepared = OnceCell::new();
    let get = || prepared.get_or_init(|| prepare(s.k, s.n, m, q8));
    let flops = 2.0 * (m * s.n * s.k) as f64;
    let base = format!("{kind}/k{}_n{}_m{m}", s.k, s.n);
    for pool in pools {
        let id = format!("{base}/ours_{}t", pool.threads());
        let best = time_ours(c, &id, m, s, pool, || &get().ours);
        if let Some(p) = prepared.get() {
            report(&format!("{id} ({})", s.name), best, p.ours.bytes(), flops);
        }
    }
    if q8 {
        for pool in pools {
            let id = format!("{base}/ours_q8_{}t", pool.threads());
            let best = time_ours(c, &id, m, s, pool, || {
                get().q8.as_ref().expect("q8 prepared")
            });
            if let Some(w) = prepared.get().and_then(|p| p.q8.as_ref()) {
                report(&format!("{id} ({})", s.name), best, w.bytes(), flops);
            }
        }
    }
    let id = format!("{base}/candle");
    let best = timed(c, &id, || {
        let p = get();
        black_box(p.candle.forward(&p.x_tensor).expect("candle forward"));
    });
    if let Some(p) = prepared.get() {
        let label = format!(
            "{id} {} {}t ({})",
            p.candle_format,
            candle_core::utils::get_num_threads(),
            s.name
        );
        report(&label, best, p.candle_bytes, flops);
    }
}

fn kernels(c: &mut Criterion) {
    let full = std::env::var_os("KERNELS_BENCH_FULL").is_some_and(|v| v != "0");
    println!(
        "kernel path: {:?}; {} mode",
        Kernel::best(),
        if full { "full" } else { "default" }
    );
    let pools: Vec<ThreadPool> = [1, 2]
        .into_iter()
        .map(|t| ThreadPool::new(t).expect("thread pool"))
        .collect();

    for pool in &pools {
        let id = format!("pool/dispatch_{}t", pool.threads());
        let best = timed(c, &id, || {
            pool.run(pool.threads(), |p| {
                black_box(p);
            })
            .expect("empty job");
        });
        if let Some(t) = best {
            println!(
                "{id:<58} best {:>9.2} µs per empty job",
                t.as_secs_f64() * 1e6
            );
        }
    }
    // A full round trip: part 0 (the caller) waits until a worker has run part 1, so the
    // time includes waking a parked worker and waiting for it to report back.
    let pool = &pools[1];
    let id = format!("pool/roundtrip_{}t", pool.threads());
    let best = timed(c, &id, || {
        let started = AtomicBool::new(false);
        pool.run(2, |p| {
            if p == 1 {
                started.store(true, Ordering::Release);
            } else {
                let t0 = Instant::now();
                while !started.load(Ordering::Acquire) && t0.elapsed() < Duration::from_millis(50) {
                    std::hint::spin_loop();
                }
            }
        })
        .expect("round trip");
    });
    if let Some(t) = best {
        println!(
            "{id:<58} best {:>9.2} µs per job a worker joins",
            t.as_secs_f64() * 1e6
        );
    }
    load_quantize(c);
    for k in [1536, 8960] {
        let id = format!("activations/quantize_k{k}");
        let x = activations(1, k);
        let mut acts = QuantizedActivations::default();
        let best = timed(c, &id, || {
            acts.requantize(black_box(&x), 1, k).expect("activations");
            black_box(&acts);
        });
        if let Some(t) = best {
            println!("{id:<58} best {:>9.2} µs per row", t.as_secs_f64() * 1e6);
        }
    }
    dram_gemv(c, &pools);
    decode_pass(c, &pools);
    for s in GEMV_SHAPES.iter().filter(|s| full || !s.full_only) {
        run_shape(c, &pools, "gemv", s, 1, full);
    }
    for s in GEMM_SHAPES.iter().filter(|s| full || !s.full_only) {
        run_shape(c, &pools, "gemm", s, gemm_rows(full), false);
    }
}

/// `quantize/*`: what a load pays per weight, one Qwen2-VL-2B gate/up weight (1536 × 8960)
/// quantized on one thread from f32 and from bf16 (a checkpoint's type) into our 4-bit tiles,
/// against candle's Q4K quantizer (`QTensor::quantize`, the GPU path's) from f32; GB/s of
/// source bytes read.
fn load_quantize(c: &mut Criterion) {
    let (k, n) = (1536, 8960);
    let w = random_weights(n, k, 7);
    let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let say = |id: &str, best: Option<Duration>, bytes: usize| {
        if let Some(t) = best {
            println!(
                "{id:<58} best {:>9.2} ms, {:>6.2} GB/s of source",
                t.as_secs_f64() * 1e3,
                bytes as f64 / t.as_secs_f64() / 1e9
            );
        }
    };
    let id = "quantize/q4_k1536_n8960_f32_1t";
    let best = timed(c, id, || {
        black_box(PackedQ4::quantize_parts(&[(black_box(&w[..]), n)], k, 1).expect("finite"));
    });
    say(id, best, w.len() * 4);
    let id = "quantize/q4_k1536_n8960_bf16_1t";
    let best = timed(c, id, || {
        black_box(PackedQ4::quantize_parts(&[(black_box(&wb[..]), n)], k, 1).expect("finite"));
    });
    say(id, best, wb.len() * 2);
    let t = Tensor::from_vec(w.clone(), (n, k), &Device::Cpu).expect("tensor");
    let id = "quantize/candle_q4k_k1536_n8960_f32";
    let best = timed(c, id, || {
        black_box(QTensor::quantize(black_box(&t), GgmlDType::Q4K).expect("candle quantize"));
    });
    say(id, best, w.len() * 4);
    // The same blocks, byte for byte, from our Q4_K quantizer (what a GPU load runs).
    let mut blocks = vec![0u8; w.len() / Q4K_BLOCK_VALUES * Q4K_BLOCK_BYTES];
    let id = "quantize/ggml_q4k_k1536_n8960_f32_1t";
    let best = timed(c, id, || {
        quantize_q4k(black_box(&w), black_box(&mut blocks)).expect("whole blocks");
    });
    say(id, best, w.len() * 4);
}

/// Distinct Qwen2-VL-2B gate/up weights (1536 × 8960) streamed through the GEMV one after
/// the other: 48 of them are 382 MB at 4.625 bits per weight, more than the L3, so every call reads
/// its weight from memory as a decode does (the other GEMV figures are cache-resident).
const DRAM_WEIGHTS: usize = 48;

/// `dram/gemv_*`: one pass over [`DRAM_WEIGHTS`] weights, GB/s of stored weights; compare with
/// `benches/bandwidth/run` at the same thread count.
fn dram_gemv(c: &mut Criterion, pools: &[ThreadPool]) {
    let (k, n) = (1536, 8960);
    // Distinct values per weight (their own seeds): copies of one weight could share
    // physical pages (a host merging identical pages) or cache lines, and not measure reads
    // from memory.
    let mut weights = Vec::with_capacity(DRAM_WEIGHTS);
    for seed in 0..DRAM_WEIGHTS as u64 {
        match PackedQ4::quantize_parts(&[(&random_weights(n, k, seed)[..], n)], k, 2) {
            Ok(q) => weights.push(q),
            Err(_) => return,
        }
    }
    let bytes: usize = weights.iter().map(PackedQ4::bytes).sum();
    let x = activations(1, k);
    let acts = QuantizedActivations::quantize(&x, 1, k).expect("activations");
    let mut y = vec![0f32; n];
    for pool in pools {
        let id = format!("dram/gemv_k{k}_n{n}_x{DRAM_WEIGHTS}_{}t", pool.threads());
        let best = timed(c, &id, || {
            for w in &weights {
                matmul_quantized(Kernel::best(), w, &acts, &mut y, pool).expect("gemv");
            }
            black_box(&y);
        });
        if let Some(t) = best {
            println!(
                "{id:<58} best {:>9.2} ms per pass of {:.0} MB, {:.1} GB/s",
                t.as_secs_f64() * 1e3,
                bytes as f64 / 1e6,
                bytes as f64 / t.as_secs_f64() / 1e9
            );
        }
    }
}

/// The linears of one Qwen2-VL-2B decoder layer `(k, n)` in a decode step's order: q, k and v
/// share one quantized input, gate and up another (as the model runs them).
const QWEN_LAYER: [(usize, usize); 7] = [
    (1536, 1536),
    (1536, 256),
    (1536, 256),
    (1536, 1536),
    (1536, 8960),
    (1536, 8960),
    (8960, 1536),
];

/// `dram/decode_qwen2vl_*`: the GEMVs of one whole Qwen2-VL-2B decode step (28 layers of
/// [`QWEN_LAYER`], distinct weights, then the 151 936-row output head), back to back on the
/// pool with the inputs quantized as the model does, and nothing else: the bound the matmuls
/// alone put on decode speed (tokens/s = 1 / pass). Reports the best and the median pass with
/// GB/s of stored weights; compare with `surveil test-model --infer` (decode tokens/s and
/// weight bytes per token) and with `benches/bandwidth/run`.
fn decode_pass(c: &mut Criterion, pools: &[ThreadPool]) {
    const LAYERS: usize = 28;
    let head = (1536, 151_936);
    // Every weight distinct (its own seed): identical pages could be merged by the host or
    // share cache lines, and would not measure reads from memory.
    let mut seed = 0u64;
    let mut source = |k: usize, n: usize| -> PackedQ4 {
        seed += 1;
        PackedQ4::quantize_parts(&[(&random_weights(n, k, seed)[..], n)], k, 2)
            .expect("finite weights")
    };
    let layers: Vec<Vec<PackedQ4>> = (0..LAYERS)
        .map(|_| QWEN_LAYER.iter().map(|&(k, n)| source(k, n)).collect())
        .collect();
    let lm_head = source(head.0, head.1);
    let bytes: usize = layers.iter().flatten().map(|w| w.bytes()).sum::<usize>() + lm_head.bytes();
    let x = activations(1, 8960);
    let mut outs: Vec<Vec<f32>> = QWEN_LAYER.iter().map(|&(_, n)| vec![0f32; n]).collect();
    let mut logits = vec![0f32; head.1];
    let mut acts = QuantizedActivations::default();
    let kernel = Kernel::best();
    for pool in pools {
        let id = format!("dram/decode_qwen2vl_{}t", pool.threads());
        let mut passes = Vec::new();
        let best = timed(c, &id, || {
            let t0 = Instant::now();
            for layer in &layers {
                for (i, w) in layer.iter().enumerate() {
                    // A new input where the model quantizes one: before q, o, gate and down.
                    if matches!(i, 0 | 3 | 4 | 6) {
                        acts.requantize(&x[..w.cols()], 1, w.cols())
                            .expect("activations");
                    }
                    matmul_quantized(kernel, w, &acts, &mut outs[i], pool).expect("gemv");
                }
            }
            acts.requantize(&x[..head.0], 1, head.0)
                .expect("activations");
            matmul_quantized(kernel, &lm_head, &acts, &mut logits, pool).expect("gemv");
            black_box(&logits);
            passes.push(t0.elapsed());
        });
        passes.sort();
        if let (Some(best), Some(&median)) = (best, passes.get(passes.len() / 2)) {
            println!(
                "{id:<58} best {:>7.2} ms, median {:>7.2} ms per pass of {:.0} MB: {:.1} / {:.1} GB/s, {:.1} / {:.1} tokens/s",
                best.as_secs_f64() * 1e3,
                median.as_secs_f64() * 1e3,
                bytes as f64 / 1e6,
                bytes as f64 / best.as_secs_f64() / 1e9,
                bytes as f64 / median.as_secs_f64() / 1e9,
                1.0 / best.as_secs_f64(),
                1.0 / median.as_secs_f64(),
            );
        }
    }
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(700))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = kernels
}
criterion_main!(benches);
