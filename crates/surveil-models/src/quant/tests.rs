//! Kernel tests: every path against the scalar reference at the real shapes of the models
//! (Qwen2-VL-2B, git-base, Kimi-VL), odd sizes and tails, the GEMM at several batch sizes, the
//! thread pool's determinism and the grouped expert GEMV.

use super::kernels::{block_dots, block_dots_q8};
use super::packed_q4::{q4_block_offset, Q4_QUANT_BYTES};
use super::packed_q8::Q8_QUANT_BYTES;
use super::test_data::{random_activations, random_weights, Lcg};
use super::*;

/// `(k, n)` of the linears of the supported models (`src/arch/*` configs): `k` = input width,
/// `n` = outputs. Output heads are cut to their first rows (`k` is what matters there).
const REAL_SHAPES: &[(&str, usize, usize)] = &[
    // Qwen2-VL-2B text decoder (hidden 1536, MLP 8960, 2 KV heads of 128, vocab 151936).
    ("qwen2vl q/o", 1536, 1536),
    ("qwen2vl k/v", 1536, 256),
    ("qwen2vl gate/up", 1536, 8960),
    ("qwen2vl down", 8960, 1536),
    ("qwen2vl lm_head (first 4096 of 151936 rows)", 1536, 4096),
    // Qwen2-VL vision tower (1280 wide, MLP 5120) and merger (4 × 1280 → 1536).
    ("qwen2vl vision qkv", 1280, 3840),
    ("qwen2vl vision proj", 1280, 1280),
    ("qwen2vl vision fc1", 1280, 5120),
    ("qwen2vl vision fc2", 5120, 1280),
    ("qwen2vl merger mlp.0", 5120, 5120),
    ("qwen2vl merger mlp.2", 5120, 1536),
    // git-base (768 wide, MLP 3072, vocab 30522).
    ("git attention", 768, 768),
    ("git fc1", 768, 3072),
    ("git fc2", 3072, 768),
    ("git output head", 768, 30522),
    // Kimi-VL-A3B text decoder (DeepSeek-V3 style: hidden 2048, experts 1408, dense 11264,
    // MLA q 16 × 192, kv_a 512 + 64, kv_b 16 × 256, 2 shared experts).
    ("kimi expert gate/up", 2048, 1408),
    ("kimi expert down", 1408, 2048),
    ("kimi dense gate/up", 2048, 11264),
    ("kimi dense down", 11264, 2048),
    ("kimi q_proj", 2048, 3072),
    ("kimi kv_a_proj", 2048, 576),
    ("kimi kv_b_proj", 512, 4096),
    ("kimi o_proj", 2048, 2048),
    ("kimi shared gate/up", 2048, 2816),
    ("kimi shared down", 2816, 2048),
    ("kimi lm_head (first 2048 of 163840 rows)", 2048, 2048),
    // Kimi-VL MoonViT (1152 wide, MLP 4304) and projector (4 × 1152 → 2048).
    ("kimi vision wqkv", 1152, 3456),
    ("kimi vision wo", 1152, 1152),
    ("kimi vision fc0", 1152, 4304),
    ("kimi vision fc1", 4304, 1152),
    ("kimi projector linear_1", 4608, 4608),
    ("kimi projector linear_2", 4608, 2048),
];

/// The SIMD paths; those this CPU lacks are skipped with a note.
fn simd_paths() -> Vec<Kernel> {
    Kernel::ALL[1..]
        .iter()
        .copied()
        .filter(|k| {
            let ok = k.is_available();
            if !ok {
                eprintln!("note: skipping {k:?}: this CPU lacks {}", k.needs());
            }
            ok
        })
        .collect()
}

/// Per output, the sum of the magnitudes of its terms, bounded from the dequantized values:
/// `Σ_i (|ŵ_i| + 2|m_i|)·|x̂_i|` ≥ `Σ_blocks |d_w·d_x·dot| + |m_w·d_x·s_x|`.
fn magnitudes(w: &PackedQ4, x: &QuantizedActivations) -> Vec<f32> {
    let (n, k) = (w.rows(), w.cols());
    let wd = w.dequantize();
    let xd = x.dequantize();
    let mut mag = vec![0f32; x.rows() * n];
    for r in 0..x.rows() {
        let xr = &xd[r * k..(r + 1) * k];
        for j in 0..n {
            let mut s = 0f64;
            for (c, (&wv, &xv)) in wd[j * k..(j + 1) * k].iter().zip(xr).enumerate() {
                let m = w.block_params(j, c / BLOCK).1;
                s += f64::from((wv.abs() + 2.0 * m.abs()) * xv.abs());
            }
            mag[r * n + j] = s as f32;
        }
    }
    mag
}

fn assert_within_tolerance(what: &str, got: &[f32], want: &[f32], mag: &[f32], blocks: usize) {
    assert_eq!(got.len(), want.len());
    for (i, ((&g, &r), &m)) in got.iter().zip(want).zip(mag).enumerate() {
        let tol = KERNEL_TOLERANCE * blocks as f32 * m + f32::MIN_POSITIVE;
        assert!(
            (g - r).abs() <= tol,
            "{what}: output {i}: {g} vs reference {r} (tolerance {tol})"
        );
    }
}

/// Every tile block's integer dots on `path` equal the scalar reference's.
fn assert_block_dots_exact(what: &str, path: Kernel, w: &PackedQ4, x: &QuantizedActivations) {
    let row = x.row(0);
    for t in 0..w.tiles() {
        for b in 0..w.blocks_per_row() {
            let tb = &w.tile(t)[q4_block_offset(b)..][..Q4_QUANT_BYTES];
            let xq = &row.q[b * BLOCK..(b + 1) * BLOCK];
            let want = block_dots(Kernel::Scalar, tb, xq).unwrap();
            let got = block_dots(path, tb, xq).unwrap();
            assert_eq!(got, want, "{what}: {path:?} tile {t} block {b}");
        }
    }
}

fn pool(threads: usize) -> ThreadPool {
    ThreadPool::new(threads).unwrap()
}

#[test]
fn reference_gemv_is_the_f32_matmul_of_the_dequantized_operands() {
    let mut rng = Lcg(1);
    for &(n, k) in &[(17, 33), (64, 4304), (5, 1408), (16, 1)] {
        let w = random_weights(&mut rng, n, k);
        let x = random_activations(&mut rng, 1, k);
        let q = PackedQ4::quantize(&w, n, k).unwrap();
        let xq = QuantizedActivations::quantize(&x, 1, k).unwrap();
        let mut y = vec![0f32; n];
        matmul_quantized(Kernel::Scalar, &q, &xq, &mut y, &pool(1)).unwrap();
        let (wd, xd) = (q.dequantize(), xq.dequantize());
        let mag = magnitudes(&q, &xq);
        for j in 0..n {
            let row = &wd[j * k..(j + 1) * k];
            // Tight: same operands in f64, only float rounding differs.
            let exact: f64 = row
                .iter()
                .zip(&xd)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let tol = 4.0 * f32::EPSILON * (k.div_ceil(BLOCK) as f32 + 4.0) * mag[j];
            assert!(
                (f64::from(y[j]) - exact).abs() <= f64::from(tol) + 1e-30,
                "[{n}, {k}] output {j}: {} vs {exact} (tol {tol})",
                y[j]
            );
            // Loose: against the original activations, the 8-bit rounding of x
            // (≤ d_x/2 per value) times the dequantized weights.
            let full: f64 = row
                .iter()
                .zip(&x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let act_err: f64 = row
                .iter()
                .enumerate()
                .map(|(c, &a)| f64::from(a.abs() * xq.row(0).d[c / BLOCK] / 2.0))
                .sum();
            assert!(
                (f64::from(y[j]) - full).abs() <= act_err * 1.001 + f64::from(tol),
                "[{n}, {k}] output {j}: {} vs f32 {full} (activation bound {act_err})",
                y[j]
            );
        }
    }
}

#[test]
fn every_path_matches_the_reference_at_the_real_shapes() {
    let paths = simd_paths();
    let mut rng = Lcg(2);
    for &(name, k, n) in REAL_SHAPES {
        let q = PackedQ4::quantize(&random_weights(&mut rng, n, k), n, k).unwrap();
        let x = random_activations(&mut rng, 1, k);
        let xq = QuantizedActivations::quantize(&x, 1, k).unwrap();
        let mut want = vec![0f32; n];
        matmul_quantized(Kernel::Scalar, &q, &xq, &mut want, &pool(1)).unwrap();
        let mag = magnitudes(&q, &xq);
        for &path in &paths {
            assert_block_dots_exact(name, path, &q, &xq);
            let mut got = vec![f32::NAN; n];
            matmul_with(path, &q, &x, 1, &mut got, &pool(2)).unwrap();
            assert_within_tolerance(name, &got, &want, &mag, q.blocks_per_row());
        }
    }
}

#[test]
fn simd_paths_equal_the_reference_bit_for_bit_today() {
    // Same integer sums, same float operations in the same order (module docs). More rows
    // than one plain call takes (4 on AVX-512, 2 on AVX2) take the tile unpacked once per
    // panel and the packed row groups of 6 (AVX2: one pass per group, an `asm!` step per
    // group size): groups of every size from 1 to 6, one panel and several (61, 68, 70, 127
    // rows over panels of 60).
    let mut rng = Lcg(3);
    let (n, k) = (300, 4304);
    let q = PackedQ4::quantize(&random_weights(&mut rng, n, k), n, k).unwrap();
    for m in [3, 5, 6, 7, 8, 9, 13, 61, 68, 70, 127] {
        let x = random_activations(&mut rng, m, k);
        let mut want = vec![0f32; m * n];
        matmul_with(Kernel::Scalar, &q, &x, m, &mut want, &pool(1)).unwrap();
        for path in simd_paths() {
            let mut got = vec![0f32; m * n];
            matmul_with(path, &q, &x, m, &mut got, &pool(2)).unwrap();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{path:?} m={m}"
            );
        }
    }
}

#[test]
fn odd_sizes_and_tails() {
    let paths = simd_paths();
    let mut rng = Lcg(4);
    let ks = [1, 31, 32, 33, 63, 4304, 1152, 1408];
    let ns = [1, 15, 16, 17, 33];
    for &k in &ks {
        for &n in &ns {
            let q = PackedQ4::quantize(&random_weights(&mut rng, n, k), n, k).unwrap();
            for m in [1, 2, 3, 5] {
                let x = random_activations(&mut rng, m, k);
                let xq = QuantizedActivations::quantize(&x, m, k).unwrap();
                let mut want = vec![0f32; m * n];
                matmul_quantized(Kernel::Scalar, &q, &xq, &mut want, &pool(1)).unwrap();
                let mag = magnitudes(&q, &xq);
                for &path in &paths {
                    let mut got = vec![f32::NAN; m * n];
                    matmul_quantized(path, &q, &xq, &mut got, &pool(3)).unwrap();
                    let what = format!("{path:?} k={k} n={n} m={m}");
                    assert_within_tolerance(&what, &got, &want, &mag, q.blocks_per_row());
                }
            }
        }
    }
    // A 30522-row head with a narrow input: many tiles, the last one cut.
    let (n, k) = (30522, 33);
    let q = PackedQ4::quantize(&random_weights(&mut rng, n, k), n, k).unwrap();
    let x = random_activations(&mut rng, 1, k);
    let mut want = vec![0f32; n];
    matmul_with(Kernel::Scalar, &q, &x, 1, &mut want, &pool(1)).unwrap();
    for &path in &paths {
        let mut got = vec![f32::NAN; n];
        matmul_with(path, &q, &x, 1, &mut got, &pool(2)).unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| a == b), "{path:?} n={n}");
    }
}

#[test]
fn zero_weights_and_activations_give_zero_not_nan() {
    let (n, k) = (20, 70);
    let q = PackedQ4::quantize(&vec![0f32; n * k], n, k).unwrap();
    let x = vec![0f32; 2 * k];
    for path in std::iter::once(Kernel::Scalar).chain(simd_paths()) {
        let mut y = vec![f32::NAN; 2 * n];
        matmul_with(path, &q, &x, 2, &mut y, &pool(1)).unwrap();
        assert!(y.iter().all(|&v| v == 0.0), "{path:?}");
    }
    // A NaN activation makes the outputs that read its block NaN (as in f32), nothing panics.
    let mut rng = Lcg(5);
    let q = PackedQ4::quantize(&random_weights(&mut rng, n, k), n, k).unwrap();
    let mut x = random_activations(&mut rng, 1, k);
    x[40] = f32::NAN;
    let mut y = vec![0f32; n];
    matmul(&q, &x, 1, &mut y, &pool(1)).unwrap();
    assert!(y.iter().all(|v| v.is_nan()));
}

#[test]
fn gemm_matches_the_reference_at_several_batch_sizes() {
    let paths = simd_paths();
    let mut rng = Lcg(6);
    for &(k, n) in &[
        (1536, 256),
        (1152, 4304),
        (4304, 1152),
        (5120, 1280),
        (2048, 1408),
    ] {
        let q = PackedQ4::quantize(&random_weights(&mut rng, n, k), n, k).unwrap();
        for m in [1, 2, 7, 64, 512] {
            let x = random_activations(&mut rng, m, k);
            // The reference on a few rows (quantization is per row, so the rows are the same).
            let mut picks = vec![0, 1, m / 2, m.saturating_sub(2), m - 1];
            picks.retain(|&r| r < m);
            picks.dedup();
            let sub: Vec<f32> = picks
                .iter()
                .flat_map(|&r| x[r * k..(r + 1) * k].iter().copied())
                .collect();
            let sq = QuantizedActivations::quantize(&sub, picks.len(), k).unwrap();
            let mut want = vec![0f32; picks.len() * n];
            matmul_quantized(Kernel::Scalar, &q, &sq, &mut want, &pool(1)).unwrap();
            let mag = magnitudes(&q, &sq);
            for &path in &paths {
                let mut got = vec![f32::NAN; m * n];
                matmul_with(path, &q, &x, m, &mut got, &pool(2)).unwrap();
                let got_sub: Vec<f32> = picks
                    .iter()
                    .flat_map(|&r| got[r * n..(r + 1) * n].iter().copied())
                    .collect();
                let what = format!("{path:?} k={k} n={n} m={m}");
                assert_within_tolerance(&what, &got_sub, &want, &mag, q.blocks_per_row());
                assert!(got.iter().all(|v| v.is_finite()), "{what}");
            }
        }
    }
}

#[test]
fn thread_count_does_not_change_results() {
    let mut rng = Lcg(7);
    let (n, k) = (1000, 1408);
    let q = PackedQ4::quantize(&random_weights(&mut rng, n, k), n, k).unwrap();
    for m in [1, 9] {
        let x = random_activations(&mut rng, m, k);
        for path in std::iter::once(Kernel::Scalar).chain(simd_paths()) {
            let mut one = vec![0f32; m * n];
            matmul_with(path, &q, &x, m, &mut one, &pool(1)).unwrap();
            for threads in [2, 3, 4] {
                let mut many = vec![f32::NAN; m * n];
                matmul_with(path, &q, &x, m, &mut many, &pool(threads)).unwrap();
                assert_eq!(one, many, "{path:?} m={m} threads={threads}");
            }
        }
    }
}

/// Several weights with one input in one job give, bit for bit, what each gives alone: the
/// q/k/v shapes of Qwen2-VL (a large and two small weights, so the small ones are split with
/// the large one) and a tiny set that stays on the calling thread; each with its epilogue;
/// 4-bit and 8-bit weights.
#[test]
fn products_in_one_job_equal_the_products_alone() {
    fn check<W: PackedWeight>(weights: &[W], biases: &[Vec<f32>], rng: &mut Lcg) {
        let k = weights[0].cols();
        for m in [1, 3, 70] {
            let x = QuantizedActivations::quantize(&random_activations(rng, m, k), m, k).unwrap();
            for path in std::iter::once(Kernel::Scalar).chain(simd_paths()) {
                for threads in [1, 2, 3] {
                    let epilogue = |i: usize| Epilogue {
                        bias: (i != 1).then_some(&biases[i][..]),
                        activation: (i == 2).then_some(halve_negatives as fn(&mut [f32])),
                        residual: None,
                    };
                    let alone: Vec<Vec<f32>> = weights
                        .iter()
                        .enumerate()
                        .map(|(i, w)| {
                            let mut y = vec![f32::NAN; m * w.rows()];
                            let e = epilogue(i);
                            matmul_quantized_then(path, w, &x, &mut y, &pool(threads), e).unwrap();
                            y
                        })
                        .collect();
                    let mut together: Vec<Vec<f32>> = weights
                        .iter()
                        .map(|w| vec![f32::NAN; m * w.rows()])
                        .collect();
                    let mut products: Vec<MatmulOut<'_, '_, W>> = weights
                        .iter()
                        .zip(together.iter_mut())
                        .enumerate()
                        .map(|(i, (w, y))| MatmulOut {
                            w,
                            y,
                            epilogue: epilogue(i),
                        })
                        .collect();
                    matmul_quantized_many(path, &mut products, &x, &pool(threads)).unwrap();
                    assert_eq!(together, alone, "k={k} m={m} {path:?} threads={threads}");
                }
            }
        }
    }
    let mut rng = Lcg(23);
    for (k, ns) in [(1536, vec![1536, 256, 256]), (96, vec![40, 16, 8])] {
        let values: Vec<Vec<f32>> = ns.iter().map(|&n| random_weights(&mut rng, n, k)).collect();
        let biases: Vec<Vec<f32>> = ns
            .iter()
            .map(|&n| (0..n).map(|_| rng.normal()).collect())
            .collect();
        let q4: Vec<PackedQ4> = values
            .iter()
            .zip(&ns)
            .map(|(w, &n)| PackedQ4::quantize(w, n, k).unwrap())
            .collect();
        check(&q4, &biases, &mut rng);
        let q8: Vec<PackedQ8> = values
            .iter()
            .zip(&ns)
            .map(|(w, &n)| PackedQ8::quantize(w, n, k).unwrap())
            .collect();
        check(&q8, &biases, &mut rng);
    }
    // A product of another width is refused before any runs.
    let w = PackedQ4::quantize(&random_weights(&mut rng, 16, 64), 16, 64).unwrap();
    let v = PackedQ4::quantize(&random_weights(&mut rng, 16, 96), 16, 96).unwrap();
    let x = QuantizedActivations::quantize(&random_activations(&mut rng, 1, 64), 1, 64).unwrap();
    let (mut a, mut b) = (vec![0f32; 16], vec![0f32; 16]);
    let mut products = [
        MatmulOut {
            w: &w,
            y: &mut a,
            epilogue: Epilogue::default(),
        },
        MatmulOut {
            w: &v,
            y: &mut b,
            epilogue: Epilogue::default(),
        },
    ];
    assert!(matches!(
        matmul_quantized_many(Kernel::Scalar, &mut products, &x, &pool(2)),
        Err(QuantError::Shape(_))
    ));
}

/// An elementwise test activation (any function of one value will do).
fn halve_negatives(y: &mut [f32]) {
    y.iter_mut().filter(|v| **v < 0.0).for_each(|v| *v *= 0.5);
}

#[test]
fn the_epilogue_is_the_same_math_as_separate_passes() {
    let mut rng = Lcg(11);
    // n = 1000: the last tile of each row is a run of 8 outputs.
    let (n, k) = (1000, 768);
    let q = PackedQ4::quantize(&random_weights(&mut rng, n, k), n, k).unwrap();
    let bias: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    for m in [1, 2, 9, 61] {
        let x = QuantizedActivations::quantize(&random_activations(&mut rng, m, k), m, k).unwrap();
        let residual: Vec<f32> = (0..m * n).map(|_| rng.normal()).collect();
        for path in std::iter::once(Kernel::Scalar).chain(simd_paths()) {
            let mut plain = vec![0f32; m * n];
            matmul_quantized(path, &q, &x, &mut plain, &pool(2)).unwrap();
            let mut want = plain.clone();
            for row in want.chunks_mut(n) {
                row.iter_mut().zip(&bias).for_each(|(y, b)| *y += b);
            }
            halve_negatives(&mut want);
            want.iter_mut().zip(&residual).for_each(|(y, r)| *y += r);
            let mut got = vec![f32::NAN; m * n];
            let epilogue = Epilogue {
                bias: Some(&bias),
                activation: Some(halve_negatives),
                residual: Some(&residual),
            };
            matmul_quantized_then(path, &q, &x, &mut got, &pool(2), epilogue).unwrap();
            assert_eq!(got, want, "{path:?} m={m}");
            // The default epilogue leaves the matmul as it is.
            let mut same = vec![f32::NAN; m * n];
            let none = Epilogue::default();
            matmul_quantized_then(path, &q, &x, &mut same, &pool(2), none).unwrap();
            assert_eq!(same, plain, "{path:?} m={m}");
        }
    }
    let x = QuantizedActivations::quantize(&vec![1f32; k], 1, k).unwrap();
    let mut y = vec![0f32; n];
    let short_bias = Epilogue {
        bias: Some(&bias[1..]),
        ..Epilogue::default()
    };
    assert!(matches!(
        matmul_quantized_then(Kernel::Scalar, &q, &x, &mut y, &pool(1), short_bias),
        Err(QuantError::Length { what: "bias", .. })
    ));
    let long_residual = vec![0f32; n + 1];
    let long_residual = Epilogue {
        residual: Some(&long_residual),
        ..Epilogue::default()
    };
    assert!(matches!(
        matmul_quantized_then(Kernel::Scalar, &q, &x, &mut y, &pool(1), long_residual),
        Err(QuantError::Length {
            what: "residual",
            ..
        })
    ));
}

#[test]
fn shape_and_availability_errors() {
    let q = PackedQ4::quantize(&[0.5f32; 64], 2, 32).unwrap();
    let p = pool(1);
    let mut y = vec![0f32; 2];
    assert!(matches!(
        matmul(&q, &[0f32; 31], 1, &mut y, &p),
        Err(QuantError::Length { .. })
    ));
    let mut short = vec![0f32; 1];
    assert!(matches!(
        matmul(&q, &[0f32; 32], 1, &mut short, &p),
        Err(QuantError::Length { what: "output", .. })
    ));
    let x33 = QuantizedActivations::quantize(&[0f32; 33], 1, 33).unwrap();
    assert!(matches!(
        matmul_quantized(Kernel::Scalar, &q, &x33, &mut y, &p),
        Err(QuantError::Shape(_))
    ));
    for path in Kernel::ALL {
        let r = matmul_with(path, &q, &[0f32; 32], 1, &mut y, &p);
        assert_eq!(r.is_ok(), path.is_available(), "{path:?}");
    }
    assert!(Kernel::best().is_available());
}

/// `experts` 4-bit weights `[n, k]` of [`random_weights`].
fn random_q4_experts(rng: &mut Lcg, experts: usize, n: usize, k: usize) -> Vec<PackedQ4> {
    (0..experts)
        .map(|_| PackedQ4::quantize(&random_weights(rng, n, k), n, k).unwrap())
        .collect()
}

#[test]
fn grouped_expert_gemv_matches_each_expert_alone() {
    let mut rng = Lcg(8);
    let (experts, k, n) = (8, 2048, 1408 / 8); // Kimi-VL expert width, fewer rows for time
    let ws = random_q4_experts(&mut rng, experts, n, k);
    let tokens = 3;
    let x = random_activations(&mut rng, tokens, k);
    let xq = QuantizedActivations::quantize(&x, tokens, k).unwrap();
    // Top-3 per token, expert 5 shared by two tokens, experts 0 and 7 unused.
    let routes: Vec<ExpertRoute> = [(5, 0), (2, 0), (3, 0), (5, 1), (1, 1), (6, 1), (4, 2)]
        .into_iter()
        .map(|(expert, row)| ExpertRoute { expert, row })
        .collect();
    for path in std::iter::once(Kernel::Scalar).chain(simd_paths()) {
        for threads in [1, 2] {
            let mut y = vec![f32::NAN; routes.len() * n];
            grouped_expert_gemv(path, &ws, &xq, &routes, &mut y, &pool(threads)).unwrap();
            for (i, r) in routes.iter().enumerate() {
                let xr =
                    QuantizedActivations::quantize(&x[r.row * k..(r.row + 1) * k], 1, k).unwrap();
                let mut want = vec![0f32; n];
                matmul_quantized(Kernel::Scalar, &ws[r.expert], &xr, &mut want, &pool(1)).unwrap();
                assert_eq!(&y[i * n..(i + 1) * n], &want[..], "{path:?} route {r:?}");
            }
        }
    }
    let bad = [ExpertRoute { expert: 8, row: 0 }];
    let mut y = vec![0f32; n];
    let err = grouped_expert_gemv(Kernel::Scalar, &ws, &xq, &bad, &mut y, &pool(1)).unwrap_err();
    assert!(matches!(err, QuantError::Shape(_)), "{err}");
    let mut y = vec![0f32; 0];
    grouped_expert_gemv(Kernel::Scalar, &ws, &xq, &[], &mut y, &pool(1)).unwrap();
}

#[test]
fn grouped_expert_prefill_takes_the_packed_rows_bit_for_bit() {
    // A prefill: 23 tokens, each routed to expert 5 and to one of experts 0..3, so that every
    // expert used gets more rows than one plain call takes (packed row groups, short last
    // group), listed out of token order.
    let mut rng = Lcg(12);
    let (experts, k, n) = (6, 1408, 40);
    let ws = random_q4_experts(&mut rng, experts, n, k);
    let tokens = 23;
    let x = random_activations(&mut rng, tokens, k);
    let xq = QuantizedActivations::quantize(&x, tokens, k).unwrap();
    let routes: Vec<ExpertRoute> = (0..tokens)
        .rev()
        .flat_map(|t| {
            [
                ExpertRoute { expert: 5, row: t },
                ExpertRoute {
                    expert: t % 3,
                    row: t,
                },
            ]
        })
        .collect();
    let mut want = vec![f32::NAN; routes.len() * n];
    grouped_expert_gemv(Kernel::Scalar, &ws, &xq, &routes, &mut want, &pool(1)).unwrap();
    for path in simd_paths() {
        let mut y = vec![f32::NAN; routes.len() * n];
        grouped_expert_gemv(path, &ws, &xq, &routes, &mut y, &pool(2)).unwrap();
        assert!(
            y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{path:?}"
        );
    }
}

/// [`magnitudes`] for 8-bit weights: `Σ_i |ŵ_i|·|x̂_i|` ≥ `Σ_blocks |d_w·d_x·dot|`.
fn magnitudes_q8(w: &PackedQ8, x: &QuantizedActivations) -> Vec<f32> {
    let (n, k) = (w.rows(), w.cols());
    let (wd, xd) = (w.dequantize(), x.dequantize());
    let mut mag = vec![0f32; x.rows() * n];
    for r in 0..x.rows() {
        for j in 0..n {
            let s: f64 = wd[j * k..(j + 1) * k]
                .iter()
                .zip(&xd[r * k..(r + 1) * k])
                .map(|(&a, &b)| f64::from((a * b).abs()))
                .sum();
            mag[r * n + j] = s as f32;
        }
    }
    mag
}

#[test]
fn q8_reference_is_the_f32_matmul_of_the_dequantized_operands() {
    let mut rng = Lcg(9);
    for &(n, k) in &[(17, 33), (40, 4304), (5, 1408), (16, 1)] {
        let q = PackedQ8::quantize(&random_weights(&mut rng, n, k), n, k).unwrap();
        let xq = QuantizedActivations::quantize(&random_activations(&mut rng, 2, k), 2, k).unwrap();
        let mut y = vec![0f32; 2 * n];
        matmul_quantized(Kernel::Scalar, &q, &xq, &mut y, &pool(1)).unwrap();
        let (wd, xd) = (q.dequantize(), xq.dequantize());
        let mag = magnitudes_q8(&q, &xq);
        for r in 0..2 {
            for j in 0..n {
                let exact: f64 = wd[j * k..(j + 1) * k]
                    .iter()
                    .zip(&xd[r * k..(r + 1) * k])
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let tol = 4.0 * f32::EPSILON * (k.div_ceil(BLOCK) as f32 + 4.0) * mag[r * n + j];
                let got = y[r * n + j];
                assert!(
                    (f64::from(got) - exact).abs() <= f64::from(tol) + 1e-30,
                    "[{n}, {k}] output {r},{j}: {got} vs {exact}"
                );
            }
        }
    }
}

#[test]
fn q8_paths_match_the_reference_at_the_real_shapes() {
    let paths = simd_paths();
    let mut rng = Lcg(10);
    for &(name, k, n) in REAL_SHAPES {
        // The widths are what differs between shapes; 300 rows keep the test short.
        let n = n.min(300);
        let q = PackedQ8::quantize(&random_weights(&mut rng, n, k), n, k).unwrap();
        for m in [1, 2, 7] {
            let xq =
                QuantizedActivations::quantize(&random_activations(&mut rng, m, k), m, k).unwrap();
            let mut want = vec![0f32; m * n];
            matmul_quantized(Kernel::Scalar, &q, &xq, &mut want, &pool(1)).unwrap();
            let mag = magnitudes_q8(&q, &xq);
            for &path in &paths {
                if m == 1 {
                    let row = xq.row(0);
                    for t in 0..q.tiles() {
                        let tile = q.tile(t);
                        for b in 0..q.blocks_per_row() {
                            let quants = &tile[b * Q8_QUANT_BYTES..(b + 1) * Q8_QUANT_BYTES];
                            let xb = &row.q[b * BLOCK..(b + 1) * BLOCK];
                            assert_eq!(
                                block_dots_q8(path, quants, xb).unwrap(),
                                block_dots_q8(Kernel::Scalar, quants, xb).unwrap(),
                                "{name}: {path:?} tile {t} block {b}"
                            );
                        }
                    }
                }
                let mut got = vec![f32::NAN; m * n];
                matmul_quantized(path, &q, &xq, &mut got, &pool(2)).unwrap();
                let what = format!("q8 {name} {path:?} m={m}");
                assert_within_tolerance(&what, &got, &want, &mag, q.blocks_per_row());
            }
        }
    }
}

#[test]
fn q8_grouped_experts_and_tails() {
    let mut rng = Lcg(12);
    for &(n, k) in &[(1, 1), (17, 33), (33, 1152)] {
        let ws: Vec<PackedQ8> = (0..3)
            .map(|_| PackedQ8::quantize(&random_weights(&mut rng, n, k), n, k).unwrap())
            .collect();
        let xq = QuantizedActivations::quantize(&random_activations(&mut rng, 2, k), 2, k).unwrap();
        let routes = [(2, 0), (0, 1), (2, 1)].map(|(expert, row)| ExpertRoute { expert, row });
        for path in std::iter::once(Kernel::Scalar).chain(simd_paths()) {
            let mut y = vec![f32::NAN; routes.len() * n];
            grouped_expert_gemv(path, &ws, &xq, &routes, &mut y, &pool(2)).unwrap();
            for (i, r) in routes.iter().enumerate() {
                let mut want = vec![0f32; 2 * n];
                matmul_quantized(Kernel::Scalar, &ws[r.expert], &xq, &mut want, &pool(1)).unwrap();
                assert_eq!(
                    &y[i * n..(i + 1) * n],
                    &want[r.row * n..(r.row + 1) * n],
                    "{path:?} [{n}, {k}] route {r:?}"
                );
            }
        }
    }
}
