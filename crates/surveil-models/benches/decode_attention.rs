//! The attention of one decode step, all layers, at the real shapes of Qwen2-VL-2B (28 layers,
//! 2 KV heads × 6 query rows × 128) and Kimi-VL-A3B's absorbed MLA (27 layers, 16 query heads
//! over one latent of 512 plus a 64-wide rope key), with every layer's cache its own buffer
//! (2 × 2 × 1024 × 128 f32 per Qwen layer), so that the caches are read from memory as in a
//! decode step, on one thread and on a pool of two; for MLA also the candle composition it
//! replaced (matmuls and softmax on candle's threads).
//!
//! ```text
//! cargo bench -p surveil-models --bench decode_attention                  # 647 cached tokens, 9 runs
//! cargo bench -p surveil-models --bench decode_attention -- --keys 2000 --runs 15
//! ```
//!
//! One line per model and thread count: best and median milliseconds per step (every layer
//! once), and GB/s of cache read (keys and values, f32) at the median.

use std::time::Instant;

use candle_core::{Device, Tensor};
use surveil_models::attention::{decode_attention, mla_decode_attention};
use surveil_models::quant::ThreadPool;

/// Best and median milliseconds of `runs` calls of `f` (after one warm-up call).
fn time_ms(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.parse::<usize>())
            .transpose()
    };
    let keys = opt("--keys")?.unwrap_or(647);
    let runs = opt("--runs")?.unwrap_or(9).max(1);
    let cap = keys.next_multiple_of(512).max(512);
    let dev = Device::Cpu;
    let pools = [ThreadPool::new(1)?, ThreadPool::new(2)?];
    println!("{keys} cached tokens (capacity {cap}), {runs} runs each");

    // Qwen2-VL-2B: q (1, 2, 6, 128) against the filled part of each layer's cache.
    let (layers, kv_heads, rows, d) = (28, 2, 6, 128);
    let caches = (0..layers)
        .map(|_| {
            let k = Tensor::randn(0f32, 1.0, (1, kv_heads, cap, d), &dev)?;
            let v = Tensor::randn(0f32, 1.0, (1, kv_heads, cap, d), &dev)?;
            Ok((k, v))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let q = Tensor::randn(0f32, 1.0, (1, kv_heads, rows, d), &dev)?;
    let scale = 1.0 / (d as f32).sqrt();
    let bytes = (layers * 2 * kv_heads * keys * d * 4) as f64;
    for pool in &pools {
        let (best, median) = time_ms(runs, || {
            for (k, v) in &caches {
                let (k, v) = (k.narrow(2, 0, keys), v.narrow(2, 0, keys));
                let (Ok(k), Ok(v)) = (k, v) else { return };
                let out = decode_attention(&q, &k, &v, scale, Some(pool));
                std::hint::black_box(out.expect("decode attention"));
            }
        });
        report("qwen2-vl-2b", pool.threads(), best, median, bytes);
    }

    // Kimi-VL-A3B: q_lat (16, 512), q_rope (16, 64) against each layer's latents and rope keys.
    let (layers, heads, rank, rope) = (27, 16, 512, 64);
    let caches = (0..layers)
        .map(|_| {
            let lat = Tensor::randn(0f32, 1.0, (cap, rank), &dev)?;
            let rk = Tensor::randn(0f32, 1.0, (cap, rope), &dev)?;
            Ok((lat, rk))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let q_lat = Tensor::randn(0f32, 1.0, (heads, rank), &dev)?;
    let q_rope = Tensor::randn(0f32, 1.0, (heads, rope), &dev)?;
    let scale = 1.0 / (192f32).sqrt();
    let bytes = (layers * keys * (rank + rope) * 4) as f64;
    for pool in &pools {
        let (best, median) = time_ms(runs, || {
            for (lat, rk) in &caches {
                let (lat, rk) = (lat.narrow(0, 0, keys), rk.narrow(0, 0, keys));
                let (Ok(lat), Ok(rk)) = (lat, rk) else { return };
                let out = mla_decode_attention(&q_lat, &q_rope, &lat, &rk, scale, Some(pool));
                std::hint::black_box(out.expect("MLA decode attention"));
            }
        });
        report("kimi-vl-a3b (MLA)", pool.threads(), best, median, bytes);
    }
    // The composition the kernel replaced: candle's matmuls and softmax (candle's threads).
    let (best, median) = time_ms(runs, || {
        for (lat, rk) in &caches {
            let composed = || -> candle_core::Result<Tensor> {
                let (lat, rk) = (lat.narrow(0, 0, keys)?, rk.narrow(0, 0, keys)?);
                let scores = (q_lat.matmul(&lat.t()?)? + q_rope.matmul(&rk.t()?)?)?;
                candle_nn::ops::softmax_last_dim(&(scores * scale as f64)?)?.matmul(&lat)
            };
            std::hint::black_box(composed().expect("composition"));
        }
    });
    report(
        "kimi-vl-a3b candle",
        candle_core::utils::get_num_threads(),
        best,
        median,
        bytes,
    );
    Ok(())
}

fn report(name: &str, threads: usize, best: f64, median: f64, bytes: f64) {
    println!(
        "{name:<20} {threads} thread(s): best {best:>7.3} ms, median {median:>7.3} ms per step, {:>5.1} GB/s of cache",
        bytes / median / 1e6
    );
}
