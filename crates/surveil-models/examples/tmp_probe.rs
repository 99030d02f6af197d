use std::time::Instant;
use candle_core::{Device, Tensor, DType};
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::git::*;
use surveil_models::weights::{DummySource, Weights};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or("q4".into());
    let policy = if mode == "f32" { QuantPolicy::unquantized(StorageDtype::F32) } else { QuantPolicy::four_bit(StorageDtype::F16) };
    let cfg = git_base_coco_config();
    let src = DummySource::new("git", GitModel::tensor_layout(&cfg), DType::F32, 7);
    let w = Weights::new(Box::new(src), Device::Cpu, policy);
    let model = GitModel::load(&cfg, &w).unwrap();
    let px = Tensor::randn(0f32, 1.0, (1, 3, 224, 224), &Device::Cpu).unwrap();
    for _ in 0..4 {
        let t0 = Instant::now();
        let img = model.image_embeddings(&px).unwrap();
        let t1 = Instant::now();
        let mut cache = model.new_cache();
        let ids = Tensor::new(&[[101u32]], &Device::Cpu).unwrap();
        let _ = model.prefill(&img, &ids, &mut cache).unwrap();
        let t2 = Instant::now();
        for _ in 0..19 { let _ = model.step(&ids, &mut cache).unwrap(); }
        let t3 = Instant::now();
        println!("vision {:.1} ms prefill {:.1} ms 19 steps {:.1} ms", (t1-t0).as_secs_f64()*1e3, (t2-t1).as_secs_f64()*1e3, (t3-t2).as_secs_f64()*1e3);
    }
}
