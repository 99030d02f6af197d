use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
fn main() {
    let d = Device::Cpu;
    let a = QTensor::quantize(&Tensor::randn(0f32, 1.0, (512, 256), &d).unwrap(), GgmlDType::Q4K).unwrap();
    let b = QTensor::quantize(&Tensor::randn(0f32, 1.0, (256, 256), &d).unwrap(), GgmlDType::Q4K).unwrap();
    let x = Tensor::randn(0f32, 1.0, (1, 1, 256), &d).unwrap();
    let r = QTensor::gemv_fused_shared_lhs(&[&a, &b], &x).unwrap();
    println!("fused available: {}", r.is_some());
}
