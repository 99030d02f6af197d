use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::time::Instant;
fn main() {
    let dev = Device::Cpu;
    for (dt, name) in [(GgmlDType::Q4K, "q4k"), (GgmlDType::Q4_0, "q4_0"), (GgmlDType::Q8_0, "q8_0")] {
        let w = Tensor::randn(0f32, 0.02, (8960, 1536), &dev).unwrap();
        let q = QMatMul::QTensor(std::sync::Arc::new(QTensor::quantize(&w, dt).unwrap()));
        for m in [1usize, 627, 2268] {
            let x = Tensor::randn(0f32, 1.0, (m, 1536), &dev).unwrap();
            let _ = q.forward(&x).unwrap();
            let reps = if m == 1 { 200 } else { 3 };
            let t = Instant::now();
            for _ in 0..reps { let _ = q.forward(&x).unwrap(); }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            let gmac = (m * 1536 * 8960) as f64 / s / 1e9;
            let gbs = (8960.0 * 1536.0 * 0.5625) / s / 1e9;
            println!("{name} m={m}: {:.3} ms, {gmac:.1} GMAC/s, weight stream {gbs:.1} GB/s", s * 1e3);
        }
    }
    // f32 gemm
    let a = Tensor::randn(0f32, 1.0, (2268, 1280), &dev).unwrap();
    let b = Tensor::randn(0f32, 1.0, (1280, 3840), &dev).unwrap();
    let _ = a.matmul(&b).unwrap();
    let t = Instant::now();
    for _ in 0..3 { let _ = a.matmul(&b).unwrap(); }
    let s = t.elapsed().as_secs_f64() / 3.0;
    println!("f32 gemm 2268x1280x3840: {:.1} ms {:.1} GMAC/s", s*1e3, 2268.0*1280.0*3840.0/s/1e9);
    let q = Tensor::randn(0f32, 1.0, (1, 16, 2268, 80), &dev).unwrap();
    let k = Tensor::randn(0f32, 1.0, (1, 16, 2268, 80), &dev).unwrap();
    let t = Instant::now();
    let sc = q.matmul(&k.t().unwrap()).unwrap();
    println!("attn scores (16x2268x2268x80): {:.1} ms", t.elapsed().as_secs_f64()*1e3);
    let t = Instant::now();
    let p = candle_nn::ops::softmax_last_dim(&sc).unwrap();
    println!("softmax: {:.1} ms", t.elapsed().as_secs_f64()*1e3);
    let t = Instant::now();
    let _ = p.matmul(&k).unwrap();
    println!("probs@v: {:.1} ms", t.elapsed().as_secs_f64()*1e3);
}
