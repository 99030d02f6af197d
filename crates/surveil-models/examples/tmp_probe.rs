use std::time::Instant;
use candle_core::{Device, Tensor, DType};
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::git::*;
use surveil_models::weights::{DummySource, Weights};

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or("q4".into());
    let policy = if mode == "f32" { QuantPolicy::unquantized(StorageDtype::F32) } else { QuantPolicy::four_bit(StorageDtype::F16) };
    let cfg = git_base_coco_config();
    let src = DummySource::new("git", GitModel::tensor_layout(&cfg), DType::F32, 7);
    let w = Weights::new(Box::new(src), Device::Cpu, policy);
    let model = GitModel::load(&cfg, &w).unwrap();
    let px = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &Device::Cpu).unwrap();
    let mut acc = [0f64; 3];
    let iters: usize = std::env::var("ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    for _ in 0..iters {
        let c0 = cpu();
        let t0 = Instant::now();
        let img = model.image_embeddings(&px).unwrap();
        let t1 = Instant::now();
        let c1 = cpu();
        let mut cache = model.new_cache(20);
        let ids = Tensor::new(&[[101u32]], &Device::Cpu).unwrap();
        let _ = model.prefill(&img, &ids, &mut cache).unwrap();
        let t2 = Instant::now();
        let c2 = cpu();
        for _ in 0..19 { let _ = model.step(&ids, &mut cache).unwrap(); }
        let t3 = Instant::now();
        let c3 = cpu();
        acc[0] += c1 - c0; acc[1] += c2 - c1; acc[2] += c3 - c2;
        println!("vision {:.1} ms prefill {:.1} ms 19 steps {:.1} ms", (t1-t0).as_secs_f64()*1e3, (t2-t1).as_secs_f64()*1e3, (t3-t2).as_secs_f64()*1e3);
    }
    println!("CPU seconds per caption: vision {:.3} prefill {:.3} steps {:.3}", acc[0]/iters as f64, acc[1]/iters as f64, acc[2]/iters as f64);
}
