use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use std::time::Instant;
fn main() {
    let n = 256 << 20; // 1 GiB of f32
    let v: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    for threads in [1usize, 2] {
        let t = Instant::now();
        let reps = 3;
        for _ in 0..reps {
            let per = n / threads;
            let s: f32 = std::thread::scope(|sc| {
                let hs: Vec<_> = v.chunks(per).map(|c| sc.spawn(move || {
                    let mut acc = [0f32; 16];
                    for ch in c.chunks_exact(16) { for i in 0..16 { acc[i] += ch[i]; } }
                    acc.iter().sum::<f32>()
                })).collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            std::hint::black_box(s);
        }
        println!("read bandwidth {threads} threads: {:.1} GB/s", (n * 4 * reps) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    let d = Device::Cpu;
    let w = Tensor::randn(0f32, 0.02, (151936, 1536), &d).unwrap();
    let q = QMatMul::QTensor(std::sync::Arc::new(QTensor::quantize(&w, GgmlDType::Q4K).unwrap()));
    drop(w);
    let x = Tensor::randn(0f32, 1.0, (1, 1536), &d).unwrap();
    let _ = q.forward(&x).unwrap();
    let t = Instant::now();
    for _ in 0..20 { let _ = q.forward(&x).unwrap(); }
    let s = t.elapsed().as_secs_f64() / 20.0;
    println!("lm_head q4k m=1: {:.2} ms -> {:.1} GB/s of q4k data ({:.1} GB/s repacked)", s*1e3, 151936.0*1536.0*0.5625/s/1e9, 151936.0*1536.0*0.75/s/1e9);
}
