use std::time::Instant;
use candle_core::{Device, Tensor, DType, Module};
use candle_core::quantized::{QMatMul, QTensor, GgmlDType};
use std::sync::Arc;

fn time<F: FnMut()>(name: &str, n: usize, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..n { f(); }
    let dt = t.elapsed().as_secs_f64() / n as f64;
    println!("{name:50} {:8.3} ms", dt * 1e3);
}

fn main() {
    let dev = Device::Cpu;
    for (m, k, n) in [(197usize, 768usize, 3072usize), (197, 3072, 768), (197, 768, 768), (1, 768, 3072), (1, 768, 30522), (198,768,768)] {
        let x = Tensor::randn(0f32, 1.0, (1, m, k), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev).unwrap();
        let flops = 2.0 * (m * k * n) as f64;
        let qf = QMatMul::Tensor(w.clone());
        let t = Instant::now(); let reps = 10;
        for _ in 0..reps { qf.forward(&x).unwrap(); }
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        println!("f32  {m}x{k}x{n}: {:.3} ms {:.1} GFLOPS", dt*1e3, flops/dt/1e9);
        let wt = w.t().unwrap().contiguous().unwrap();
        let t = Instant::now();
        for _ in 0..reps { x.broadcast_matmul(&wt).unwrap(); }
        let dt = t.elapsed().as_secs_f64() / reps as f64;
        println!("f32c {m}x{k}x{n}: {:.3} ms {:.1} GFLOPS", dt*1e3, flops/dt/1e9);
        if k % 256 == 0 {
            let q = QMatMul::QTensor(Arc::new(QTensor::quantize(&w, GgmlDType::Q4K).unwrap()));
            q.forward(&x).unwrap();
            let t = Instant::now();
            for _ in 0..reps { q.forward(&x).unwrap(); }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            println!("q4k  {m}x{k}x{n}: {:.3} ms {:.1} GFLOPS", dt*1e3, flops/dt/1e9);
            let q = QMatMul::QTensor(Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()));
            q.forward(&x).unwrap();
            let t = Instant::now();
            for _ in 0..reps { q.forward(&x).unwrap(); }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            println!("q8_0 {m}x{k}x{n}: {:.3} ms {:.1} GFLOPS", dt*1e3, flops/dt/1e9);
        }
    }
    let x = Tensor::randn(0f32, 1.0, (1, 197, 3072), &dev).unwrap();
    time("gelu_erf 197x3072", 20, || { x.gelu_erf().unwrap(); });
    time("quick_gelu 197x3072", 20, || { (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap(); });
    let h = Tensor::randn(0f32, 1.0, (1, 197, 768), &dev).unwrap();
    let g = Tensor::ones(768, DType::F32, &dev).unwrap();
    let b = Tensor::zeros(768, DType::F32, &dev).unwrap();
    time("layer_norm (candle_nn fused) 197x768", 50, || { candle_nn::ops::layer_norm(&h, &g, &b, 1e-5).unwrap(); });
    time("layer_norm (slow composite) 197x768", 50, || {
        let mean = h.mean_keepdim(2).unwrap(); let xc = h.broadcast_sub(&mean).unwrap();
        let var = xc.sqr().unwrap().mean_keepdim(2).unwrap();
        xc.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap()).unwrap().broadcast_mul(&g).unwrap().broadcast_add(&b).unwrap(); });
    let q = Tensor::randn(0f32, 1.0, (1, 12, 197, 64), &dev).unwrap();
    time("attention 12x197x64", 20, || {
        let s = (q.matmul(&q.t().unwrap()).unwrap() * 0.125).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        p.matmul(&q).unwrap(); });
    time("split heads (reshape+transpose+contig)", 50, || { h.reshape((1,197,12,64)).unwrap().transpose(1,2).unwrap().contiguous().unwrap(); });
    let q1 = Tensor::randn(0f32, 1.0, (1, 12, 1, 64), &dev).unwrap();
    let kk = Tensor::randn(0f32, 1.0, (1, 12, 210, 64), &dev).unwrap();
    time("attention step 12x1x210", 50, || {
        let s = (q1.matmul(&kk.t().unwrap()).unwrap() * 0.125).unwrap();
        let p = candle_nn::ops::softmax_last_dim(&s).unwrap();
        p.matmul(&kk).unwrap(); });
    time("cat kv 12x210x64 +1", 50, || { Tensor::cat(&[&kk, &q1], 2).unwrap(); });
}
