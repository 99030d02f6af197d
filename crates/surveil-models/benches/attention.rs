//! The vision towers' attention at the real shapes of one 768×576 frame: the fused CPU kernel
//! (`surveil_models::attention::flash_attention`, each path this CPU has) against the unfused
//! composition it replaced (candle's batched GEMMs and the softmax kernel, in query chunks),
//! on the same inputs in the same run.
//!
//! ```text
//! cargo bench -p surveil-models --bench attention                  # every shape, 5 runs each
//! cargo bench -p surveil-models --bench attention -- --runs 9 --shape qwen
//! cargo bench -p surveil-models --bench attention -- --shape qwen --impl avx2
//! ```
//!
//! Shapes `(heads, tokens, head width)`: Qwen2-VL-2B's tower (16, 2268, 80: the frame resized
//! to 756×588, 14-pixel patches), Kimi-VL's MoonViT (16, 2352, 72: padded to 784×588) and
//! git-base's ViT (12, 197, 64: 224×224, plus the class token). Threads: candle's count
//! (`RAYON_NUM_THREADS`, default all cores). One line per shape and implementation: best and
//! median milliseconds per call, GFLOP/s of the two matmuls (`4 · heads · n² · d` ÷ the median)
//! and the speed-up of the median against the composition. `--impl NAME` runs one
//! implementation only (`avx512bf16`, `avx512`, `avx2`, `portable`), without the
//! composition.

use std::time::Instant;

use candle_core::{Device, Tensor};
use surveil_models::attention::{
    flash_attention_with, full_attention_composed, FlashPath, KeyMask,
};

struct Case {
    name: &'static str,
    heads: usize,
    n: usize,
    d: usize,
}

const CASES: &[Case] = &[
    Case {
        name: "qwen2vl vision",
        heads: 16,
        n: 2268,
        d: 80,
    },
    Case {
        name: "kimi-vl moonvit",
        heads: 16,
        n: 2352,
        d: 72,
    },
    Case {
        name: "git-base vit",
        heads: 12,
        n: 197,
        d: 64,
    },
];

fn time_ms(runs: usize, mut f: impl FnMut()) -> (f64, f64) {
    f(); // warm-up: page faults of the outputs, packing buffers
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

/// `"  N.NN× composed"`, or nothing when the composition did not run.
fn speedup(base: f64, med: f64) -> String {
    if base.is_finite() {
        format!("  {:.2}× composed", base / med)
    } else {
        String::new()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = opt("--runs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5)
        .max(1);
    let only = opt("--shape");
    let imp = opt("--impl");
    let wanted = |name: &str| imp.as_deref().is_none_or(|i| name == i);
    let dev = Device::Cpu;
    println!(
        "threads {}, {} runs each",
        candle_core::utils::get_num_threads(),
        runs
    );
    for c in CASES {
        if only.as_deref().is_some_and(|o| !c.name.contains(o)) {
            continue;
        }
        let q = Tensor::randn(0f32, 1.0, (1, c.heads, c.n, c.d), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, c.heads, c.n, c.d), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, c.heads, c.n, c.d), &dev)?;
        let scale = 1.0 / (c.d as f32).sqrt();
        let flops = 4.0 * (c.heads * c.n * c.n * c.d) as f64;
        let shape = format!("{} ({}×{}×{})", c.name, c.heads, c.n, c.d);
        // The composition is the reference every speed-up is quoted against; `--impl` skips it.
        let mut base = f64::NAN;
        if imp.is_none() {
            let best;
            (best, base) = time_ms(runs, || {
                let _ = std::hint::black_box(
                    full_attention_composed(&q, &k, &v, f64::from(scale)).expect("composition"),
                );
            });
            println!(
                "{shape:<34} composed   best {best:8.1} ms  median {base:8.1} ms  {:6.1} GFLOP/s",
                flops / base / 1e6
            );
        }
        for path in [
            #[cfg(target_arch = "x86_64")]
            FlashPath::Avx512Bf16,
            #[cfg(target_arch = "x86_64")]
            FlashPath::Avx512,
            #[cfg(target_arch = "x86_64")]
            FlashPath::Avx2,
            FlashPath::Portable,
        ] {
            let name = format!("{path:?}").to_lowercase();
            if !path.is_available() || !wanted(&name) {
                continue;
            }
            let (best, med) = time_ms(runs, || {
                let _ = std::hint::black_box(
                    flash_attention_with(&q, &k, &v, scale, KeyMask::All, path)
                        .expect("flash attention"),
                );
            });
            println!(
                "{shape:<34} {name:<13} best {best:8.1} ms  median {med:8.1} ms  {:6.1} GFLOP/s{}",
                flops / med / 1e6,
                speedup(base, med)
            );
        }
    }
    Ok(())
}
