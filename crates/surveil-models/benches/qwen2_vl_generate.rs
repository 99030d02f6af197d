//! Full-size Qwen2-VL-2B generation on CPU with dummy weights (real shapes): one 768×576 frame
//! and a 60-token text prompt → 32 new tokens. Prints load time, vision encode time, prefill,
//! time to first token, decode tokens/s and peak RSS (VmHWM), medians over the runs.
//!
//! ```text
//! cargo bench -p surveil-models --bench qwen2_vl_generate
//! QWEN2VL_BENCH_POLICY=q4_0 QWEN2VL_BENCH_RUNS=3 cargo bench -p surveil-models --bench qwen2_vl_generate
//! ```
//! `QWEN2VL_BENCH_POLICY`: `q4k` (default: 4-bit, Q4K where rows allow), `q4_0`, `q8_0`, `f16`.
//! `QWEN2VL_BENCH_MODEL`: `2b` (default) or `7b`. `QWEN2VL_BENCH_MAX_PIXELS`: the processor's
//! `max_pixels` (default 1003520; 200704 gives 234 image tokens for the frame instead of 567).
//! `QWEN2VL_BENCH_RUNS`: generations to take the median over (3). Output text is meaningless
//! (dummy weights). Other processes on the machine distort the numbers a lot: candle's worker
//! threads spin at barriers, so a busy core can triple the per-token time.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::arch::qwen2_vl::{
    qwen2_vl_2b_config, qwen2_vl_7b_config, tensor_layout, ChatMessage, GenerationParams, Logits,
    MultimodalInput, Qwen2VlImageProcessor, Qwen2VlModel, Qwen2VlTokenizer,
};
use surveil_models::load::weights::{DummySource, Weights};
use surveil_models::vlm::OnToken;

fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn gib(kib: u64) -> f64 {
    kib as f64 / (1024.0 * 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn shared_dir() -> Option<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|d| d.join("../shared/fixtures"))
        .find(|d| d.is_dir())
}

fn frame() -> image::RgbImage {
    let fixture = std::env::var_os("SURVEIL_FIXTURES")
        .map(PathBuf::from)
        .or_else(shared_dir)
        .map(|d| d.join("processors/images/vtest_frame.png"));
    if let Some(img) = fixture.and_then(|p| image::open(p).ok()) {
        return img.to_rgb8();
    }
    image::RgbImage::from_fn(768, 576, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8])
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs: usize = std::env::var("QWEN2VL_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let policy_name = std::env::var("QWEN2VL_BENCH_POLICY").unwrap_or_else(|_| "q4k".into());
    let policy = QuantPolicy::for_storage(
        policy_name
            .parse::<StorageDtype>()
            .map_err(|e| format!("QWEN2VL_BENCH_POLICY: {e}"))?,
    );
    let model_name = std::env::var("QWEN2VL_BENCH_MODEL").unwrap_or_else(|_| "2b".into());
    let cfg = if model_name == "7b" {
        qwen2_vl_7b_config()
    } else {
        qwen2_vl_2b_config()
    };
    println!(
        "qwen2-vl-{model_name} dummy weights (bf16 source), policy {}",
        policy.describe()
    );
    println!("threads: {}", candle_core::utils::get_num_threads());

    // Load.
    let t = Instant::now();
    let src = DummySource::new(
        format!("qwen2-vl-{model_name}"),
        tensor_layout(&cfg),
        DType::BF16,
        1,
    );
    let w = Weights::new(Box::new(src), Device::Cpu, policy);
    let model = Qwen2VlModel::load(&cfg, &w)?;
    let report = w.report();
    println!(
        "load: {:.1} s, resident weights {:.3} GiB {:?}, RSS after load {:.3} GiB (peak {:.3} GiB)",
        t.elapsed().as_secs_f64(),
        report.total_bytes() as f64 / (1u64 << 30) as f64,
        report.tensors_by_dtype,
        gib(status_kib("VmRSS:")),
        gib(status_kib("VmHWM:")),
    );

    // Prompt: chat template around one frame, 60 text tokens.
    let proc = match std::env::var("QWEN2VL_BENCH_MAX_PIXELS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(max) => {
            Qwen2VlImageProcessor::with_pixels(Qwen2VlImageProcessor::default().min_pixels, max)?
        }
        None => Qwen2VlImageProcessor::default(),
    };
    let img = frame();
    let t = Instant::now();
    let packed = proc.preprocess_images(std::slice::from_ref(&img), &Device::Cpu)?;
    let preprocess_s = t.elapsed().as_secs_f64();
    let grid = packed.grids[0];
    let merge = cfg.vision.spatial_merge_size;
    let tok_path = surveil_config::paths::asset("tokenizers/qwen2-vl/tokenizer.json");
    let input_ids = match Qwen2VlTokenizer::from_file(&tok_path) {
        Ok(tok) => {
            let mut text = String::from("Describe what the people in this frame are doing");
            loop {
                let p = tok.encode_chat(
                    &[ChatMessage::user_with_images(1, text.clone())],
                    &[grid],
                    &[],
                    merge,
                )?;
                let n_text = p.mm_token_type_ids.iter().filter(|&&t| t == 0).count();
                if n_text >= 60 {
                    break p.input_ids;
                }
                text.push_str(" and why");
            }
        }
        Err(e) => {
            println!("tokenizer unavailable ({e}); using synthetic ids");
            let mut ids: Vec<u32> = (1000..1030).collect();
            ids.push(cfg.vision_start_token_id);
            ids.extend(std::iter::repeat_n(
                cfg.image_token_id,
                grid.merged_tokens(merge),
            ));
            ids.push(cfg.vision_end_token_id);
            ids.extend(2000..2028);
            ids
        }
    };
    let n_text = input_ids
        .iter()
        .filter(|&&t| t != cfg.image_token_id)
        .count();
    println!(
        "prompt: {} tokens ({} text + {} image tokens), frame {}x{} -> grid {:?}, preprocess {:.3} s",
        input_ids.len(),
        n_text,
        input_ids.len() - n_text,
        img.width(),
        img.height(),
        grid,
        preprocess_s
    );
    let input = MultimodalInput {
        input_ids,
        pixel_values: Some(packed.pixel_values),
        image_grids: packed.grids,
        ..Default::default()
    };

    let params = GenerationParams::greedy(32);
    let (mut ttft, mut tps, mut vision, mut prefill, mut total) =
        (vec![], vec![], vec![], vec![], vec![]);
    for run in 0..runs {
        let mut stamps = Vec::new();
        let out = model.generate(
            &input,
            &params,
            &[],
            None,
            &mut OnToken(|_, _: &str| {
                stamps.push(Instant::now());
                ControlFlow::Continue(())
            }),
        )?;
        let gaps: Vec<f64> = stamps
            .windows(2)
            .map(|w| (w[1] - w[0]).as_secs_f64() * 1e3)
            .collect();
        println!(
            "run {run}: per-token gaps (ms): {}",
            gaps.iter()
                .map(|g| format!("{g:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let s = &out.stats;
        println!(
            "run {run}: vision {:.2} s, prefill {:.2} s, TTFT {:.2} s, decode {:.2} tok/s ({} tokens), total {:.2} s",
            s.vision_s, s.prefill_s, s.time_to_first_token_s, s.decode_tokens_per_s, s.generated_tokens, s.total_s
        );
        ttft.push(s.time_to_first_token_s);
        tps.push(s.decode_tokens_per_s);
        vision.push(s.vision_s);
        prefill.push(s.prefill_s);
        total.push(s.total_s);
    }
    // Text-only decode speed at the same context length, without the vision tower.
    let mut state = model.prefill(&input, Logits::Last)?;
    let first = state.rope.next_position();
    let t = Instant::now();
    let steps = 32u32;
    for k in 0..steps {
        model.decode_step(1000 + k, first + k as i64, &mut state.cache)?;
    }
    let decode_only = steps as f64 / t.elapsed().as_secs_f64();
    println!(
        "median over {runs}: vision encode {:.2} s, text prefill {:.2} s, TTFT {:.2} s, decode {:.2} tok/s (separate decode loop: {:.2} tok/s), total {:.2} s",
        median(vision),
        median(prefill),
        median(ttft),
        median(tps),
        decode_only,
        median(total)
    );
    println!(
        "peak RSS (VmHWM) {:.3} GiB, RSS now {:.3} GiB, KV cache {:.1} MiB",
        gib(status_kib("VmHWM:")),
        gib(status_kib("VmRSS:")),
        state.cache.bytes() as f64 / (1u64 << 20) as f64
    );
    Ok(())
}
