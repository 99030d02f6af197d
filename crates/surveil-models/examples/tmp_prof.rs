use candle_core::{DType, Device, Tensor};
use std::time::Instant;
use surveil_memory::{QuantPolicy, StorageDtype};
use surveil_models::qwen2_vl::*;
use surveil_models::weights::{DummySource, Weights};
fn main() {
    let mut cfg = qwen2_vl_2b_config();
    cfg.text.num_hidden_layers = 8;
    cfg.vision.depth = 2;
    let src = DummySource::new("p", tensor_layout(&cfg), DType::BF16, 1);
    let w = Weights::new(Box::new(src), Device::Cpu, QuantPolicy::four_bit(StorageDtype::F16));
    let model = Qwen2VlModel::load(&cfg, &w).unwrap();
    let what = std::env::args().nth(1).unwrap_or_default();
    if what == "vision" || what.is_empty() {
        let grid = GridThw::new(1, 42, 54);
        let px = Tensor::randn(0f32, 1.0, (grid.patches(), 1176), &Device::Cpu).unwrap();
        let _ = model.vision().forward(&px, &[grid]).unwrap();
        let t = Instant::now();
        let _ = model.vision().forward(&px, &[grid]).unwrap();
        println!("vision 2 blocks: {:.3} s", t.elapsed().as_secs_f64());
    }
    if what == "decode" || what.is_empty() {
        let ids: Vec<u32> = (100..700).collect();
        let input = MultimodalInput { input_ids: ids, ..Default::default() };
        let t = Instant::now();
        let mut st = model.prefill(&input, Logits::Last).unwrap();
        println!("prefill 600 tok, 8 layers: {:.3} s", t.elapsed().as_secs_f64());
        let mut pos = st.rope.next_position();
        let n = 100;
        let t = Instant::now();
        for k in 0..n { model.decode_step(5 + k, pos, &mut st.cache).unwrap(); pos += 1; }
        println!("decode step (8 layers + lm_head): {:.2} ms", t.elapsed().as_secs_f64() * 1e3 / n as f64);
    }
}
