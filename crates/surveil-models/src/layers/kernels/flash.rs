//! Fused softmax attention for the CPU: `softmax(scale · Q Kᵀ + mask) V` per head without
//! materialising the score matrix, by the online softmax of FlashAttention (Dao et al. 2022,
//! "FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness", Algorithm 1).
//! The mask is none (vision towers), causal after a KV cache (text prefills) or causal after a
//! prefix every row sees (GIT's decoder) ([`KeyMask`]).
//!
//! A vision tower attends over every patch of a frame: for Qwen2-VL-2B and one 768×576 frame,
//! 16 heads × 2268 × 2268 scores per block, with a head width of 80. Batched GEMMs over such
//! shapes run far below the CPU's FMA rate (the inner dimension of `Q Kᵀ` is only 80, the
//! output width of `P V` too), and the scores travel through memory twice. Here one task takes
//! [`QB`] queries of one head and streams the head's keys and values in blocks of [`KB`]:
//!
//! 1. `S = Q Kᵀ` for 8 queries × 32 keys at a time, from `Q` prescaled by `scale · log2 e` and
//!    `Kᵀ` packed per 32-key block as `[d][32]` (16 zmm accumulators on AVX-512; on AVX2 four
//!    passes of 4 queries × 16 keys, 8 ymm accumulators each);
//! 2. the online softmax per query row: new running maximum `m`, correction `2^(m_old − m)`,
//!    `P = 2^(S − m)` (the polynomial `exp2` of the softmax kernel), running sum `l`;
//! 3. `O ← corr · O + P V` for 4 queries × up to 80 output columns at a time (16 on AVX2), `V`
//!    packed with rows padded to a multiple of 16 floats.
//!
//! At the end `O / l`. Scores, probabilities and the output block stay in L1; `Kᵀ` and `V` of
//! a head (0.7 MB each at Qwen2-VL's shape) stay in L2 across the head's tasks.
//!
//! Paths: AVX-512F intrinsics when the CPU has them, else AVX2+FMA intrinsics (16 ymm
//! registers: every micro-tile keeps 8 accumulators, enough independent chains for two FMA
//! pipes of 4-cycle latency without spilling), else the same blocked algorithm in plain Rust
//! (the reference). All three sum in f32 in the same order over the head dimension; they
//! differ from the unfused composition (candle's GEMMs and the softmax kernel) by f32 rounding
//! only, see the tests. Work is split by (head, 32-query block) over candle's thread count; a
//! call under about 8 M multiply-adds per thread uses fewer threads.
//!
//! A fourth path, for callers whose model is not f32 ([`AttentionPrecision::Bf16`]: the vision
//! towers of quantized and half-precision models), runs both products with AVX-512 BF16's
//! `vdpbf16ps` on operands rounded to bf16 (two multiply-adds per f32 lane and instruction),
//! the softmax and every sum in f32: relative RMS error about 0.3 % against f32 at scores of a
//! few units (the tests).
//!
//! Measured (`cargo bench -p surveil-models --bench attention`, 2 threads): AVX-512, 164
//! GFLOP/s at Qwen2-VL-2B's tower shape, 4.9× the unfused composition; AVX2+FMA (AMD EPYC,
//! Zen 3), 120 GFLOP/s at that shape, 3.7× the composition; AMD EPYC Zen 5, AVX-512 359
//! GFLOP/s, AVX-512 BF16 473 GFLOP/s (docs/performance.md).

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

use super::attention::exp2_nonpositive;
use super::{contiguous_f32, AttentionShape};
use crate::Result;

/// Queries per task.
const QB: usize = 32;
/// Keys per block.
const KB: usize = 32;
/// Queries per `Q Kᵀ` micro-tile.
const SR: usize = 8;
/// Queries per `P V` micro-tile.
const PR: usize = 4;
/// Output columns (16-float vectors) per `P V` micro-tile.
const PV_VECS: usize = 5;
/// Floats per vector.
const LANES: usize = 16;

const LOG2_E: f32 = std::f32::consts::LOG2_E;

/// Which code computes the micro-tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlashPath {
    /// AVX-512F intrinsics.
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX-512 BF16 (`vdpbf16ps`): queries, keys, values and probabilities rounded to bf16
    /// (round to nearest even), products summed in f32, the softmax in f32. Twice the
    /// multiply-adds of [`FlashPath::Avx512`] per instruction, at bf16's precision (8 bits of
    /// mantissa); chosen only for [`AttentionPrecision::Bf16`].
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    /// AVX2+FMA intrinsics (256-bit vectors).
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Plain Rust for any CPU.
    Portable,
}

impl FlashPath {
    /// The fastest f32 path this CPU runs.
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                return Self::Avx2;
            }
        }
        Self::Portable
    }

    /// The fastest path for `precision`: [`FlashPath::Avx512Bf16`] for
    /// [`AttentionPrecision::Bf16`] where the CPU has AVX-512 BF16, else [`FlashPath::best`].
    pub fn best_for(precision: AttentionPrecision) -> Self {
        #[cfg(target_arch = "x86_64")]
        if precision == AttentionPrecision::Bf16 && Self::Avx512Bf16.is_available() {
            return Self::Avx512Bf16;
        }
        let _ = precision;
        Self::best()
    }

    /// Whether this CPU can run the path.
    pub fn is_available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => std::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512Bf16 => {
                std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bf16")
            }
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => {
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
            }
            Self::Portable => true,
        }
    }
}

/// The arithmetic attention may use, chosen by the caller from the model's weights: f32
/// throughout, or bf16 operands with f32 sums where the weights are stored with less
/// precision than f32 anyway (a quantized or half-precision model), as the reference
/// implementations run such models (transformers' bf16 SDPA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionPrecision {
    /// f32 operands and sums.
    #[default]
    F32,
    /// bf16 operands (queries, keys, values, probabilities), f32 sums and softmax, where the
    /// CPU has AVX-512 BF16; f32 elsewhere.
    Bf16,
}

impl AttentionPrecision {
    /// [`AttentionPrecision::Bf16`] when the model's linear weights are stored in anything but
    /// f32 (4-bit, 8-bit, f16, bf16), else [`AttentionPrecision::F32`].
    pub fn for_weights(linear: surveil_memory::StorageDtype) -> Self {
        if linear == surveil_memory::StorageDtype::F32 {
            Self::F32
        } else {
            Self::Bf16
        }
    }
}

/// Which keys each query sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMask {
    /// Every key (a vision tower's attention within one image).
    All,
    /// Causal: query row `r` of a head sees keys `0..=offset + r % period`. A prefill of `s`
    /// tokens after `past` cached ones is `offset: past, period: s`; with the query heads of
    /// one key/value head stacked as `rep · s` rows (grouped-query attention), the same.
    Causal {
        /// Keys before the first query's own position (the KV cache's length before the call).
        offset: usize,
        /// Rows after which the positions repeat (the new tokens per head).
        period: usize,
    },
    /// Causal after a prefix every row sees (a prefix language model: GIT's decoder, whose
    /// image tokens attend to each other and text tokens to every image token and the earlier
    /// text): query row `r` sees keys `0..max(prefix, offset + r % period + 1)`.
    PrefixCausal {
        /// Keys every row sees.
        prefix: usize,
        /// As [`KeyMask::Causal`]'s.
        offset: usize,
        /// As [`KeyMask::Causal`]'s.
        period: usize,
    },
}

/// Shapes of one call: `heads` independent heads, `n` queries and `m` keys each, query/key
/// width `dk`, value width `dv`.
#[derive(Debug, Clone, Copy)]
struct Dims {
    heads: usize,
    n: usize,
    m: usize,
    dk: usize,
    dv: usize,
    mask: KeyMask,
}

impl Dims {
    /// Key blocks per head.
    fn key_blocks(&self) -> usize {
        self.m.div_ceil(KB)
    }
    /// `V`'s packed row width: `dv` rounded up to whole vectors.
    fn dvp(&self) -> usize {
        self.dv.div_ceil(LANES) * LANES
    }
    /// Elements of one head's packed `Kᵀ` for a packed query/key width `width` (`dk` in f32,
    /// `dk` rounded up to a pair in bf16).
    fn kt_len(&self, width: usize) -> usize {
        self.key_blocks() * width * KB
    }
    /// Elements of one head's packed `V`.
    fn vp_len(&self) -> usize {
        self.key_blocks() * KB * self.dvp()
    }
}

/// Run `f(scratch, task)` for every task on up to `threads` threads (the caller included),
/// each thread with its own scratch from `scratch()`.
pub(super) fn run_tasks<T: Send, S>(
    tasks: Vec<T>,
    threads: usize,
    scratch: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, T) + Sync,
) {
    let threads = threads.clamp(1, tasks.len().max(1));
    if threads == 1 {
        let mut s = scratch();
        tasks.into_iter().for_each(|t| f(&mut s, t));
        return;
    }
    // Tasks are taken in order from a shared counter; each slot is taken exactly once.
    let slots: Vec<std::sync::Mutex<Option<T>>> = tasks
        .into_iter()
        .map(|t| std::sync::Mutex::new(Some(t)))
        .collect();
    let next = AtomicUsize::new(0);
    let work = || {
        let mut s = scratch();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(slot) = slots.get(i) else { break };
            let task = slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(task) = task {
                f(&mut s, task);
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(work);
        }
        work();
    });
}

/// Pack one head's keys `k` (`m × dk`) as `Kᵀ` blocks `[block][dk][KB]` (zeros past `m`) and
/// its values `v` (`m × dv`) as rows of `dvp` floats, `KB · blocks` rows (zeros past `m`).
fn pack_head(dims: &Dims, k: &[f32], v: &[f32], kt: &mut [f32], vp: &mut [f32]) {
    let (dk, dv, dvp) = (dims.dk, dims.dv, dims.dvp());
    kt.fill(0.0);
    vp.fill(0.0);
    for (j, key) in k.chunks_exact(dk).enumerate() {
        let (blk, col) = (j / KB, j % KB);
        let base = blk * dk * KB + col;
        for (dd, &x) in key.iter().enumerate() {
            kt[base + dd * KB] = x;
        }
    }
    for (row, dst) in v.chunks_exact(dv).zip(vp.chunks_exact_mut(dvp)) {
        dst[..dv].copy_from_slice(row);
    }
}

/// Pack one head for [`FlashPath::Avx512Bf16`], in bf16 pairs (what one 32-bit lane of
/// `vdpbf16ps` multiplies): `Kᵀ` blocks `[block][dk/2][KB][2]` (pairs of consecutive head
/// dimensions of a key; `dk` rounded up with a zero) and `V` blocks `[block][KB/2][dvp][2]`
/// (pairs of consecutive keys of a column); zeros past `m` and `dv`.
fn pack_head_bf16(dims: &Dims, k: &[f32], v: &[f32], kt: &mut [u16], vp: &mut [u16]) {
    let (dk, dv, dvp) = (dims.dk, dims.dv, dims.dvp());
    let width = dk.next_multiple_of(2);
    kt.fill(0);
    vp.fill(0);
    let bf = |x: f32| half::bf16::from_f32(x).to_bits();
    for (j, key) in k.chunks_exact(dk).enumerate() {
        let (blk, col) = (j / KB, j % KB);
        let base = blk * width * KB;
        for (dd, &x) in key.iter().enumerate() {
            kt[base + ((dd / 2) * KB + col) * 2 + dd % 2] = bf(x);
        }
    }
    for (j, row) in v.chunks_exact(dv).enumerate() {
        let base = (j / 2) * dvp * 2 + j % 2;
        for (c, &x) in row.iter().enumerate() {
            vp[base + c * 2] = bf(x);
        }
    }
}

/// Per-thread buffers of one query block; `E` is the element of the packed operands (`f32`,
/// or a bf16's bits as `u16`).
struct Scratch<E> {
    /// Queries × `scale · log2 e`, `QB` rows of the packed width (rows past the block's end
    /// are zeros).
    q: Vec<E>,
    /// Scores of one key block, `QB` rows of `KB`.
    s: Vec<[f32; KB]>,
    /// Probabilities of one key block, `QB` rows of `KB`.
    p: Vec<[f32; KB]>,
    /// Unnormalised output, `QB × dvp`.
    o: Vec<f32>,
    /// Running maximum (log2 domain) and sum per query.
    m: [f32; QB],
    l: [f32; QB],
    /// This block's correction `2^(m_old − m_new)` per query.
    corr: [f32; QB],
    /// Keys each query sees (`0..limit`).
    limit: [usize; QB],
}

impl<E: Copy + Default> Scratch<E> {
    fn new(dims: &Dims, width: usize) -> Self {
        Self {
            q: vec![E::default(); QB * width],
            s: vec![[0.0; KB]; QB],
            p: vec![[0.0; KB]; QB],
            o: vec![0.0; QB * dims.dvp()],
            m: [f32::NEG_INFINITY; QB],
            l: [0.0; QB],
            corr: [1.0; QB],
            limit: [0; QB],
        }
    }
}

/// The larger of two floats, `a` when they are unordered: a plain compare-and-select the
/// compiler turns into one `vmaxps` (`f32::max`'s NaN rules cost more and block vectorising).
#[inline(always)]
fn larger(a: f32, b: f32) -> f32 {
    if b > a {
        b
    } else {
        a
    }
}

/// `op` over 16 lanes as a pairwise tree (4 dependent steps, where a left fold takes 15).
#[inline(always)]
fn tree(mut x: [f32; LANES], op: impl Fn(f32, f32) -> f32) -> f32 {
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            x[i] = op(x[i], x[i + w]);
        }
        w /= 2;
    }
    x[0]
}

/// The online-softmax update of one query row for one key block: `s` holds the block's `KB`
/// scores in the log2 domain (`-inf` past the last key); writes `p = 2^(s − m_new)`, updates
/// the running maximum `m` and sum `l`, and returns the correction `2^(m_old − m_new)` for the
/// row's output so far. Written over 16 lanes so that the compiler vectorises the maximum, the
/// `exp2` and the sum.
#[inline(always)]
fn softmax_update(s: &[f32; KB], p: &mut [f32; KB], m: &mut f32, l: &mut f32) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    for half in s.chunks_exact(LANES) {
        for (x, &y) in lanes.iter_mut().zip(half) {
            *x = larger(*x, y);
        }
    }
    let new = larger(*m, tree(lanes, larger));
    let corr = if new == *m {
        1.0
    } else {
        exp2_nonpositive(*m - new)
    };
    let mut sums = [0f32; LANES];
    for (ph, sh) in p.chunks_exact_mut(LANES).zip(s.chunks_exact(LANES)) {
        for ((pj, &sj), acc) in ph.iter_mut().zip(sh).zip(sums.iter_mut()) {
            let e = exp2_nonpositive(sj - new);
            *pj = e;
            *acc += e;
        }
    }
    *l = *l * corr + tree(sums, |a, b| a + b);
    *m = new;
    corr
}

/// Rows per accumulator group of the plain-Rust `Q Kᵀ` tile: 4 × 32 floats, the 16 registers
/// of AVX2.
const PORTABLE_ROWS: usize = 4;

/// `S` (`SR × KB`) `= Q` (`SR × dk`, rows `dk` apart) `· Kᵀ` block (`dk × KB`), plain Rust.
#[inline(always)]
fn s_tile_portable(q: &[f32], dk: usize, kt: &[f32], s: &mut [f32]) {
    for g in 0..SR / PORTABLE_ROWS {
        let mut acc = [[0f32; KB]; PORTABLE_ROWS];
        for dd in 0..dk {
            let krow = &kt[dd * KB..dd * KB + KB];
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = q[(g * PORTABLE_ROWS + r) * dk + dd];
                for (x, &kv) in a.iter_mut().zip(krow) {
                    *x += qv * kv;
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let row = g * PORTABLE_ROWS + r;
            s[row * KB..row * KB + KB].copy_from_slice(a);
        }
    }
}

/// `W` output columns from `col` of [`pv_tile_portable`], accumulated in registers.
#[inline(always)]
fn pv_cols_portable<const W: usize>(
    p: &[f32],
    v: &[f32],
    dvp: usize,
    o: &mut [f32],
    corr: &[f32],
    col: usize,
) {
    let mut acc = [[0f32; W]; PR];
    for (r, a) in acc.iter_mut().enumerate() {
        for (x, &y) in a.iter_mut().zip(&o[r * dvp + col..r * dvp + col + W]) {
            *x = y * corr[r];
        }
    }
    for j in 0..KB {
        let vrow = &v[j * dvp + col..j * dvp + col + W];
        for (r, a) in acc.iter_mut().enumerate() {
            let pj = p[r * KB + j];
            for (x, &vv) in a.iter_mut().zip(vrow) {
                *x += pj * vv;
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        o[r * dvp + col..r * dvp + col + W].copy_from_slice(a);
    }
}

/// `O ← corr · O + P V` for `PR` rows: `p` (`PR × KB`), `v` the block's packed rows (`KB ×
/// dvp`), `o` (`PR × dvp`), plain Rust, 32 columns at a time (16 at the end).
#[inline(always)]
fn pv_tile_portable(p: &[f32], v: &[f32], dvp: usize, o: &mut [f32], corr: &[f32]) {
    let mut col = 0;
    while col + 2 * LANES <= dvp {
        pv_cols_portable::<{ 2 * LANES }>(p, v, dvp, o, corr, col);
        col += 2 * LANES;
    }
    if col < dvp {
        pv_cols_portable::<LANES>(p, v, dvp, o, corr, col);
    }
}

/// `$cols::<C>($args.., col)` over the `$dvp` output columns in chunks of `C` vectors, `C`
/// at most [`PV_VECS`] (a const generic per chunk width: the accumulators stay in registers).
#[cfg(target_arch = "x86_64")]
macro_rules! column_chunks {
    ($dvp:expr, $cols:ident($($arg:expr),*)) => {{
        let dvp: usize = $dvp;
        assert!(dvp.is_multiple_of(LANES), "packed V rows are whole vectors");
        let mut col = 0;
        while col < dvp {
            let c = ((dvp - col) / LANES).min(PV_VECS);
            match c {
                5 => $cols::<5>($($arg,)* col),
                4 => $cols::<4>($($arg,)* col),
                3 => $cols::<3>($($arg,)* col),
                2 => $cols::<2>($($arg,)* col),
                _ => $cols::<1>($($arg,)* col),
            }
            col += c * LANES;
        }
    }};
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::super::attention::EXP2_POLY;
    use super::{larger, KB, LANES, PR, PV_VECS, SR};

    /// `2^t` for 16 lanes, as [`super::super::attention::exp2_nonpositive`] computes it for
    /// `t ≤ 0`: `t` clamped to `[-126, ∞)`, `t = n + f` with `n` rounded to nearest, `2^f` by the
    /// same polynomial, `2^n` applied by `vscalefps`; lanes below `-126` (and `-inf`) give 0.
    #[target_feature(enable = "avx512f")]
    fn exp2(t: __m512) -> __m512 {
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(t, _mm512_set1_ps(-126.0));
        let t = _mm512_max_ps(t, _mm512_set1_ps(-126.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        let f = _mm512_sub_ps(t, n);
        let c = |i: usize| _mm512_set1_ps(EXP2_POLY[i]);
        let mut p = c(6);
        for i in (0..6).rev() {
            p = _mm512_fmadd_ps(p, f, c(i));
        }
        _mm512_maskz_mov_ps(!below, _mm512_scalef_ps(p, n))
    }

    /// [`super::softmax_update`] with AVX-512F: the block's 32 scores in two registers,
    /// horizontal maximum and sum by the reduction intrinsics.
    #[target_feature(enable = "avx512f")]
    pub(super) fn softmax_update(
        s: &[f32; KB],
        p: &mut [f32; KB],
        m: &mut f32,
        l: &mut f32,
    ) -> f32 {
        // SAFETY: `s` and `p` hold 32 floats: two vectors each.
        let (s0, s1) = unsafe {
            (
                _mm512_loadu_ps(s.as_ptr()),
                _mm512_loadu_ps(s.as_ptr().add(LANES)),
            )
        };
        let new = larger(*m, _mm512_reduce_max_ps(_mm512_max_ps(s0, s1)));
        let corr = if new == *m {
            1.0
        } else {
            super::exp2_nonpositive(*m - new)
        };
        let nv = _mm512_set1_ps(new);
        let e0 = exp2(_mm512_sub_ps(s0, nv));
        let e1 = exp2(_mm512_sub_ps(s1, nv));
        // SAFETY: as above.
        unsafe {
            _mm512_storeu_ps(p.as_mut_ptr(), e0);
            _mm512_storeu_ps(p.as_mut_ptr().add(LANES), e1);
        }
        *l = *l * corr + _mm512_reduce_add_ps(_mm512_add_ps(e0, e1));
        *m = new;
        corr
    }

    /// [`super::s_tile_portable`] with AVX-512F: 8 rows × 2 vectors of accumulators, `Kᵀ`
    /// rows loaded once per `dd`, the query value broadcast.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `q` holds `SR · dk` floats, `kt` `dk · KB`, `s` `SR · KB`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn s_tile(q: &[f32], dk: usize, kt: &[f32], s: &mut [f32]) {
        debug_assert!(q.len() >= SR * dk && kt.len() >= dk * KB && s.len() >= SR * KB);
        let (q, kt, s) = (q.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
        let mut acc = [[_mm512_setzero_ps(); 2]; SR];
        for dd in 0..dk {
            // SAFETY (every access below): in bounds by the sizes of the contract.
            let (k0, k1) = unsafe {
                (
                    _mm512_loadu_ps(kt.add(dd * KB)),
                    _mm512_loadu_ps(kt.add(dd * KB + LANES)),
                )
            };
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = _mm512_set1_ps(unsafe { *q.add(r * dk + dd) });
                a[0] = _mm512_fmadd_ps(qv, k0, a[0]);
                a[1] = _mm512_fmadd_ps(qv, k1, a[1]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            unsafe {
                _mm512_storeu_ps(s.add(r * KB), a[0]);
                _mm512_storeu_ps(s.add(r * KB + LANES), a[1]);
            }
        }
    }

    /// `C` vectors of [`super::pv_tile_portable`]'s columns, starting at column `col`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `p` holds `PR · KB` floats, `v` `KB · dvp`, `o` `PR · dvp`,
    /// `col + 16 C ≤ dvp`.
    #[target_feature(enable = "avx512f")]
    unsafe fn pv_cols<const C: usize>(
        p: *const f32,
        v: *const f32,
        dvp: usize,
        o: *mut f32,
        corr: &[f32],
        col: usize,
    ) {
        // SAFETY (every access below): in bounds by the sizes of the contract.
        let mut acc = unsafe { load_scaled::<C>(o, dvp, corr, col) };
        for j in 0..KB {
            let mut vv = [_mm512_setzero_ps(); C];
            for (i, x) in vv.iter_mut().enumerate() {
                *x = unsafe { _mm512_loadu_ps(v.add(j * dvp + col + i * LANES)) };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let pj = _mm512_set1_ps(unsafe { *p.add(r * KB + j) });
                for (x, &y) in a.iter_mut().zip(&vv) {
                    *x = _mm512_fmadd_ps(pj, y, *x);
                }
            }
        }
        unsafe { store::<C>(&acc, o, dvp, col) };
    }

    /// `C` vectors of each of the `PR` output rows from column `col`, each row multiplied by
    /// its correction: the accumulators a `P V` column chunk starts from.
    ///
    /// # Safety
    /// Called from code with AVX-512F enabled; `o` holds `PR · dvp` floats, `corr` `PR`,
    /// `col + 16 C ≤ dvp`.
    #[inline(always)]
    pub(super) unsafe fn load_scaled<const C: usize>(
        o: *const f32,
        dvp: usize,
        corr: &[f32],
        col: usize,
    ) -> [[__m512; C]; PR] {
        // SAFETY (every call): AVX-512F is enabled in the caller this is inlined into.
        let mut acc = [[unsafe { _mm512_setzero_ps() }; C]; PR];
        for (r, a) in acc.iter_mut().enumerate() {
            let c = unsafe { _mm512_set1_ps(corr[r]) };
            for (i, x) in a.iter_mut().enumerate() {
                // SAFETY: in bounds by the contract.
                *x = unsafe { _mm512_mul_ps(c, _mm512_loadu_ps(o.add(r * dvp + col + i * LANES))) };
            }
        }
        acc
    }

    /// Store [`load_scaled`]'s accumulators back to the output rows.
    ///
    /// # Safety
    /// As [`load_scaled`].
    #[inline(always)]
    pub(super) unsafe fn store<const C: usize>(
        acc: &[[__m512; C]; PR],
        o: *mut f32,
        dvp: usize,
        col: usize,
    ) {
        for (r, a) in acc.iter().enumerate() {
            for (i, &x) in a.iter().enumerate() {
                // SAFETY: in bounds by the contract; AVX-512F as in `load_scaled`.
                unsafe { _mm512_storeu_ps(o.add(r * dvp + col + i * LANES), x) };
            }
        }
    }

    /// [`super::pv_tile_portable`] with AVX-512F, in column chunks of up to 5 vectors (4 rows ×
    /// 5 = 20 accumulators).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `p` holds `PR · KB` floats, `v` `KB · dvp`, `o` `PR · dvp`,
    /// `corr` `PR`; `dvp` is a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn pv_tile(p: &[f32], v: &[f32], dvp: usize, o: &mut [f32], corr: &[f32]) {
        debug_assert!(dvp.is_multiple_of(LANES) && p.len() >= PR * KB && corr.len() >= PR);
        debug_assert!(v.len() >= KB * dvp && o.len() >= PR * dvp);
        let (p, v, o) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
        // SAFETY: the contract's sizes, and `col + 16 C ≤ dvp` by the choice of `C`.
        unsafe { column_chunks!(dvp, pv_cols(p, v, dvp, o, corr)) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512_bf16 {
    use std::arch::x86_64::*;

    use super::avx512::{load_scaled, store};
    use super::{KB, LANES, PR, PV_VECS, SR};

    /// 64 bytes as 32 bf16 (the same bits).
    #[inline(always)]
    fn bh(x: __m512i) -> __m512bh {
        // SAFETY: both are 64-byte vectors with no invalid bit patterns.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(x) }
    }

    /// `S` (`SR × KB`) `= Q` (`SR` rows of `width` bf16, pairs of head dimensions) `· Kᵀ`
    /// block (`width / 2` pairs × `KB` keys × 2, [`super::pack_head_bf16`]'s layout): per pair
    /// of dimensions, two key vectors and one `vdpbf16ps` per row and vector (8 rows × 2
    /// vectors of accumulators, as [`super::avx512::s_tile`]).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16; `width` is even; `q` holds `SR · width`
    /// elements, `kt` `width · KB`, `s` `SR · KB`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn s_tile(q: &[u16], width: usize, kt: &[u16], s: &mut [f32]) {
        debug_assert!(width.is_multiple_of(2) && q.len() >= SR * width);
        debug_assert!(kt.len() >= width * KB && s.len() >= SR * KB);
        let (q, kt, s) = (q.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
        let mut acc = [[_mm512_setzero_ps(); 2]; SR];
        for pp in 0..width / 2 {
            // SAFETY (every access below): in bounds by the sizes of the contract.
            let (k0, k1) = unsafe {
                (
                    bh(_mm512_loadu_si512(kt.add(pp * KB * 2).cast())),
                    bh(_mm512_loadu_si512(kt.add(pp * KB * 2 + 2 * LANES).cast())),
                )
            };
            for (r, a) in acc.iter_mut().enumerate() {
                let pair = unsafe { q.add(r * width + 2 * pp).cast::<i32>().read_unaligned() };
                let qv = bh(_mm512_set1_epi32(pair));
                a[0] = _mm512_dpbf16_ps(a[0], qv, k0);
                a[1] = _mm512_dpbf16_ps(a[1], qv, k1);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            unsafe {
                _mm512_storeu_ps(s.add(r * KB), a[0]);
                _mm512_storeu_ps(s.add(r * KB + LANES), a[1]);
            }
        }
    }

    /// `C` vectors of [`pv_tile`]'s columns from column `col`: `pb` the rows' probabilities
    /// as bf16 pairs of consecutive keys.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16; `v` holds `KB · dvp` elements, `o` `PR · dvp`
    /// floats, `col + 16 C ≤ dvp`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pv_cols<const C: usize>(
        pb: &[[i32; KB / 2]; PR],
        v: *const u16,
        dvp: usize,
        o: *mut f32,
        corr: &[f32],
        col: usize,
    ) {
        // SAFETY (every access below): in bounds by the sizes of the contract.
        let mut acc = unsafe { load_scaled::<C>(o, dvp, corr, col) };
        // `jj` indexes a column of `pb` and a row pair of `v` at once.
        #[allow(clippy::needless_range_loop)]
        for jj in 0..KB / 2 {
            let mut vv = [bh(_mm512_setzero_si512()); C];
            for (i, x) in vv.iter_mut().enumerate() {
                *x = bh(unsafe {
                    _mm512_loadu_si512(v.add((jj * dvp + col + i * LANES) * 2).cast())
                });
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let pj = bh(_mm512_set1_epi32(pb[r][jj]));
                for (x, &y) in a.iter_mut().zip(&vv) {
                    *x = _mm512_dpbf16_ps(*x, pj, y);
                }
            }
        }
        unsafe { store::<C>(&acc, o, dvp, col) };
    }

    /// `O ← corr · O + P V` for `PR` rows: `p` (`PR × KB` f32, rounded here to bf16), `v`
    /// the block's values in [`super::pack_head_bf16`]'s layout (`KB / 2` key pairs × `dvp`
    /// × 2), `o` (`PR × dvp`); column chunks of up to 5 vectors as
    /// [`super::avx512::pv_tile`].
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16; `p` holds `PR · KB` floats, `v` `KB · dvp`
    /// elements, `o` `PR · dvp` floats, `corr` `PR`; `dvp` is a multiple of 16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pv_tile(p: &[f32], v: &[u16], dvp: usize, o: &mut [f32], corr: &[f32]) {
        debug_assert!(dvp.is_multiple_of(LANES) && p.len() >= PR * KB && corr.len() >= PR);
        debug_assert!(v.len() >= KB * dvp && o.len() >= PR * dvp);
        let mut pb = [[0i32; KB / 2]; PR];
        for (r, dst) in pb.iter_mut().enumerate() {
            // SAFETY: `p` holds `PR · KB` floats; `dst` is 64 bytes.
            unsafe {
                let lo = _mm512_loadu_ps(p.as_ptr().add(r * KB));
                let hi = _mm512_loadu_ps(p.as_ptr().add(r * KB + LANES));
                let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(dst.as_mut_ptr().cast(), packed);
            }
        }
        let (v, o) = (v.as_ptr(), o.as_mut_ptr());
        // SAFETY: the contract's sizes, and `col + 16 C ≤ dvp` by the choice of `C`.
        unsafe { column_chunks!(dvp, pv_cols(&pb, v, dvp, o, corr)) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::attention::EXP2_POLY;
    use super::{larger, KB, PR, SR};

    /// Floats per 256-bit vector.
    const W: usize = 8;
    /// Query rows per `Q Kᵀ` pass.
    const S_ROWS: usize = 4;
    /// Key vectors (8 keys each) per `Q Kᵀ` pass.
    const S_VECS: usize = 2;
    /// Output vectors per `P V` column chunk.
    const PV_VECS: usize = 2;

    /// `2^t` for 8 lanes, as [`super::super::attention::exp2_nonpositive`] computes it for
    /// `t ≤ 0`: `t` clamped to `[-126, ∞)`, `t = n + f` with `n` rounded to nearest, `2^f` by
    /// the same polynomial, `2^n` applied by adding `n` to the exponent bits; lanes below
    /// `-126` (and `-inf`) give 0. With `t ≥ -126`, `n = -126` only with `f ≥ 0`, so `2^f ≥ 1`
    /// and the sum of exponents stays normal.
    #[target_feature(enable = "avx2,fma")]
    fn exp2(t: __m256) -> __m256 {
        let lo = _mm256_set1_ps(-126.0);
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(t, lo);
        let t = _mm256_max_ps(t, lo);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(t);
        let f = _mm256_sub_ps(t, n);
        let c = |i: usize| _mm256_set1_ps(EXP2_POLY[i]);
        let mut p = c(6);
        for i in (0..6).rev() {
            p = _mm256_fmadd_ps(p, f, c(i));
        }
        let scaled = _mm256_add_epi32(
            _mm256_castps_si256(p),
            _mm256_slli_epi32::<23>(_mm256_cvtps_epi32(n)),
        );
        _mm256_andnot_ps(below, _mm256_castsi256_ps(scaled))
    }

    /// The largest of 8 lanes (a pairwise tree of 3 steps).
    #[target_feature(enable = "avx2,fma")]
    fn hmax(x: __m256) -> f32 {
        let h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps::<1>(h, h)))
    }

    /// The sum of 8 lanes (a pairwise tree of 3 steps).
    #[target_feature(enable = "avx2,fma")]
    fn hsum(x: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps::<1>(h, h)))
    }

    /// [`super::softmax_update`] with AVX2+FMA: the block's 32 scores in four registers, the
    /// maximum and the sum as pairwise trees over them and then over the lanes.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn softmax_update(
        s: &[f32; KB],
        p: &mut [f32; KB],
        m: &mut f32,
        l: &mut f32,
    ) -> f32 {
        let mut x = [_mm256_setzero_ps(); KB / W];
        for (i, xi) in x.iter_mut().enumerate() {
            // SAFETY: `s` holds 32 floats: four vectors.
            *xi = unsafe { _mm256_loadu_ps(s.as_ptr().add(i * W)) };
        }
        let top = _mm256_max_ps(_mm256_max_ps(x[0], x[1]), _mm256_max_ps(x[2], x[3]));
        let new = larger(*m, hmax(top));
        let corr = if new == *m {
            1.0
        } else {
            super::exp2_nonpositive(*m - new)
        };
        let nv = _mm256_set1_ps(new);
        let mut e = [_mm256_setzero_ps(); KB / W];
        for (i, (ei, &xi)) in e.iter_mut().zip(&x).enumerate() {
            *ei = exp2(_mm256_sub_ps(xi, nv));
            // SAFETY: `p` holds 32 floats: four vectors.
            unsafe { _mm256_storeu_ps(p.as_mut_ptr().add(i * W), *ei) };
        }
        let sum = _mm256_add_ps(_mm256_add_ps(e[0], e[1]), _mm256_add_ps(e[2], e[3]));
        *l = *l * corr + hsum(sum);
        *m = new;
        corr
    }

    /// Rows `r0..r0 + R` × keys `8 v0..8 (v0 + C)` of [`s_tile`]: `R · C` accumulators, `C`
    /// `Kᵀ` loads and `R` query broadcasts per `dd`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `q` holds `SR · dk` floats, `kt` `dk · KB`, `s` `SR · KB`;
    /// `r0 + R ≤ SR`, `8 (v0 + C) ≤ KB`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn s_pass<const R: usize, const C: usize>(
        q: *const f32,
        dk: usize,
        kt: *const f32,
        s: *mut f32,
        r0: usize,
        v0: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for dd in 0..dk {
            let mut k = [_mm256_setzero_ps(); C];
            for (i, x) in k.iter_mut().enumerate() {
                // SAFETY (every access below): in bounds by the sizes of the contract.
                *x = unsafe { _mm256_loadu_ps(kt.add(dd * KB + (v0 + i) * W)) };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let qv = _mm256_set1_ps(unsafe { *q.add((r0 + r) * dk + dd) });
                for (x, &y) in a.iter_mut().zip(&k) {
                    *x = _mm256_fmadd_ps(qv, y, *x);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (i, &x) in a.iter().enumerate() {
                unsafe { _mm256_storeu_ps(s.add((r0 + r) * KB + (v0 + i) * W), x) };
            }
        }
    }

    /// [`super::s_tile_portable`] with AVX2+FMA, in four passes over `dd` of 4 rows × 2 vectors
    /// (16 keys): 8 accumulators, as many independent FMA chains as two pipes of 4-cycle latency
    /// keep busy, with 2 `Kᵀ` loads and 4 broadcasts per `dd`. Blockings of 12 accumulators
    /// (4 rows × 3 vectors, 3 rows × 4) leave no spare register among the 16, so the compiler
    /// spills inside the loop. Each score is one chain over `dd` in order, as in the
    /// plain-Rust tile.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `q` holds `SR · dk` floats, `kt` `dk · KB`, `s` `SR · KB`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn s_tile(q: &[f32], dk: usize, kt: &[f32], s: &mut [f32]) {
        debug_assert!(q.len() >= SR * dk && kt.len() >= dk * KB && s.len() >= SR * KB);
        let (q, kt, s) = (q.as_ptr(), kt.as_ptr(), s.as_mut_ptr());
        for r0 in (0..SR).step_by(S_ROWS) {
            for v0 in (0..KB / W).step_by(S_VECS) {
                // SAFETY: the contract's sizes; the passes cover rows 0..8 × vectors 0..4.
                unsafe { s_pass::<S_ROWS, S_VECS>(q, dk, kt, s, r0, v0) };
            }
        }
    }

    /// Columns `col..col + 16` of [`super::pv_tile_portable`]: 4 rows × 2 vectors of
    /// accumulators, 2 `V` loads and 4 broadcasts per key.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `p` holds `PR · KB` floats, `v` `KB · dvp`, `o` `PR · dvp`,
    /// `corr` `PR`; `col + 16 ≤ dvp`.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pv_cols(
        p: *const f32,
        v: *const f32,
        dvp: usize,
        o: *mut f32,
        corr: &[f32],
        col: usize,
    ) {
        let mut acc = [[_mm256_setzero_ps(); PV_VECS]; PR];
        for (r, a) in acc.iter_mut().enumerate() {
            let c = _mm256_set1_ps(corr[r]);
            for (i, x) in a.iter_mut().enumerate() {
                // SAFETY (every access below): in bounds by the sizes of the contract.
                *x = _mm256_mul_ps(c, unsafe { _mm256_loadu_ps(o.add(r * dvp + col + i * W)) });
            }
        }
        for j in 0..KB {
            let mut vv = [_mm256_setzero_ps(); PV_VECS];
            for (i, x) in vv.iter_mut().enumerate() {
                *x = unsafe { _mm256_loadu_ps(v.add(j * dvp + col + i * W)) };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                let pj = _mm256_set1_ps(unsafe { *p.add(r * KB + j) });
                for (x, &y) in a.iter_mut().zip(&vv) {
                    *x = _mm256_fmadd_ps(pj, y, *x);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (i, &x) in a.iter().enumerate() {
                unsafe { _mm256_storeu_ps(o.add(r * dvp + col + i * W), x) };
            }
        }
    }

    /// [`super::pv_tile_portable`] with AVX2+FMA, 16 columns at a time (`dvp` is a multiple of
    /// 16): 8 accumulators per chunk, for the same reasons as [`s_tile`]'s blocking (chunks of
    /// 3 vectors would need 12 and spill).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `p` holds `PR · KB` floats, `v` `KB · dvp`, `o` `PR · dvp`,
    /// `corr` `PR`; `dvp` is a multiple of 16.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pv_tile(p: &[f32], v: &[f32], dvp: usize, o: &mut [f32], corr: &[f32]) {
        debug_assert!(dvp.is_multiple_of(PV_VECS * W) && p.len() >= PR * KB && corr.len() >= PR);
        debug_assert!(v.len() >= KB * dvp && o.len() >= PR * dvp);
        let (p, v, o) = (p.as_ptr(), v.as_ptr(), o.as_mut_ptr());
        for col in (0..dvp).step_by(PV_VECS * W) {
            // SAFETY: the contract's sizes; `col + 16 ≤ dvp` as `dvp` is a multiple of 16.
            unsafe { pv_cols(p, v, dvp, o, corr, col) };
        }
    }
}

/// One task's inputs: its queries (`rows × dk`), the index of the first of them within the
/// head, the head's packed `Kᵀ` and `V` (elements `E`, `Kᵀ` rows of the packed width), and
/// the factor the queries are scaled by.
#[derive(Clone, Copy)]
struct Task<'a, E> {
    q: &'a [f32],
    rows: usize,
    q0: usize,
    kt: &'a [E],
    vp: &'a [E],
    qscale: f32,
}

/// One task: queries `q0..q0 + rows` of a head against the head's packed keys and values,
/// with the given micro-tiles; writes `out` (`rows × dv`). `width` is the packed query/key
/// width, `elem` rounds a scaled query value to the packed element.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn query_block<E: Copy + Default>(
    dims: &Dims,
    width: usize,
    task: Task<'_, E>,
    out: &mut [f32],
    sc: &mut Scratch<E>,
    elem: impl Fn(f32) -> E,
    s_tile: impl Fn(&[E], usize, &[E], &mut [f32]),
    pv_tile: impl Fn(&[f32], &[E], usize, &mut [f32], &[f32]),
    softmax: impl Fn(&[f32; KB], &mut [f32; KB], &mut f32, &mut f32) -> f32,
) {
    let Task {
        q,
        rows,
        q0,
        kt,
        vp,
        qscale,
    } = task;
    let (dk, dv, dvp, m) = (dims.dk, dims.dv, dims.dvp(), dims.m);
    // Rows rounded up to whole micro-tiles; the padding rows are zero queries, dropped at the end.
    let tiles = rows.div_ceil(SR);
    let padded = tiles * SR;
    for (dst, src) in sc.q[..rows * width]
        .chunks_exact_mut(width)
        .zip(q.chunks_exact(dk))
    {
        for (d, &x) in dst.iter_mut().zip(src) {
            *d = elem(x * qscale);
        }
        dst[dk..].fill(E::default());
    }
    sc.q[rows * width..padded * width].fill(E::default());
    sc.o[..padded * dvp].fill(0.0);
    sc.m[..padded].fill(f32::NEG_INFINITY);
    sc.l[..padded].fill(0.0);
    // Keys each row sees: all of them, or a causal prefix (at least key 0). Padding rows see
    // key 0 only, so that they never widen the block's key range.
    for r in 0..padded {
        sc.limit[r] = match dims.mask {
            _ if r >= rows => 1,
            KeyMask::All => m,
            KeyMask::Causal { offset, period } => (offset + (q0 + r) % period.max(1) + 1).min(m),
            KeyMask::PrefixCausal {
                prefix,
                offset,
                period,
            } => prefix.max(offset + (q0 + r) % period.max(1) + 1).min(m),
        };
    }
    let seen = sc.limit[..padded].iter().copied().max().unwrap_or(0);
    for blk in 0..seen.div_ceil(KB) {
        let base = blk * KB;
        let ktb = &kt[blk * width * KB..(blk + 1) * width * KB];
        let vb = &vp[blk * KB * dvp..(blk + 1) * KB * dvp];
        for t in 0..tiles {
            let rows_t = t * SR..(t + 1) * SR;
            if sc.limit[rows_t.clone()].iter().all(|&l| l <= base) {
                // No row of this tile sees a key of the block (causal): no scores to compute.
                sc.s[rows_t]
                    .iter_mut()
                    .for_each(|row| row.fill(f32::NEG_INFINITY));
                continue;
            }
            s_tile(
                &sc.q[t * SR * width..(t + 1) * SR * width],
                width,
                ktb,
                sc.s[rows_t].as_flattened_mut(),
            );
        }
        for (row, &limit) in sc.s[..padded].iter_mut().zip(&sc.limit) {
            let valid = limit.saturating_sub(base).min(KB);
            if valid < KB {
                // Keys past the row's limit (causal) or past the last key (padding).
                row[valid..].fill(f32::NEG_INFINITY);
            }
        }
        for r in 0..padded {
            sc.corr[r] = softmax(&sc.s[r], &mut sc.p[r], &mut sc.m[r], &mut sc.l[r]);
        }
        for t in 0..padded / PR {
            if sc.limit[t * PR..(t + 1) * PR].iter().all(|&l| l <= base) {
                // All four rows' probabilities are 0 and their corrections 1: `O` unchanged.
                continue;
            }
            pv_tile(
                sc.p[t * PR..(t + 1) * PR].as_flattened(),
                vb,
                dvp,
                &mut sc.o[t * PR * dvp..(t + 1) * PR * dvp],
                &sc.corr[t * PR..(t + 1) * PR],
            );
        }
    }
    for r in 0..rows {
        // l ≥ 1: the row's maximum contributes 2⁰.
        let inv = 1.0 / sc.l[r];
        for (y, &x) in out[r * dv..(r + 1) * dv]
            .iter_mut()
            .zip(&sc.o[r * dvp..r * dvp + dv])
        {
            *y = x * inv;
        }
    }
}

/// [`query_block`] on the plain-Rust tiles, for any CPU.
fn query_block_portable(dims: &Dims, task: Task<'_, f32>, out: &mut [f32], sc: &mut Scratch<f32>) {
    query_block(
        dims,
        dims.dk,
        task,
        out,
        sc,
        |x| x,
        s_tile_portable,
        pv_tile_portable,
        softmax_update,
    )
}

/// [`query_block`] on the AVX2+FMA tiles.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn query_block_avx2(
    dims: &Dims,
    task: Task<'_, f32>,
    out: &mut [f32],
    sc: &mut Scratch<f32>,
) {
    query_block(
        dims,
        dims.dk,
        task,
        out,
        sc,
        |x| x,
        // SAFETY: AVX2 and FMA are enabled for this function (the caller checked the CPU); the
        // slices have the sizes `query_block` documents.
        |q, dk, kt, s| unsafe { avx2::s_tile(q, dk, kt, s) },
        |p, v, dvp, o, c| unsafe { avx2::pv_tile(p, v, dvp, o, c) },
        |s, p, m, l| avx2::softmax_update(s, p, m, l),
    )
}

/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn query_block_avx512(
    dims: &Dims,
    task: Task<'_, f32>,
    out: &mut [f32],
    sc: &mut Scratch<f32>,
) {
    query_block(
        dims,
        dims.dk,
        task,
        out,
        sc,
        |x| x,
        // SAFETY: AVX-512F is enabled for this function (the caller checked the CPU); the
        // slices have the sizes `query_block` documents.
        |q, dk, kt, s| unsafe { avx512::s_tile(q, dk, kt, s) },
        |p, v, dvp, o, c| unsafe { avx512::pv_tile(p, v, dvp, o, c) },
        |s, p, m, l| avx512::softmax_update(s, p, m, l),
    )
}

/// [`query_block`] on the AVX-512 BF16 tiles (operands packed by [`pack_head_bf16`]).
///
/// # Safety
/// The CPU has AVX-512F and AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn query_block_avx512_bf16(
    dims: &Dims,
    task: Task<'_, u16>,
    out: &mut [f32],
    sc: &mut Scratch<u16>,
) {
    query_block(
        dims,
        dims.dk.next_multiple_of(2),
        task,
        out,
        sc,
        |x| half::bf16::from_f32(x).to_bits(),
        // SAFETY: AVX-512F and BF16 are enabled for this function (the caller checked the
        // CPU); the slices have the sizes `query_block` documents.
        |q, width, kt, s| unsafe { avx512_bf16::s_tile(q, width, kt, s) },
        |p, v, dvp, o, c| unsafe { avx512_bf16::pv_tile(p, v, dvp, o, c) },
        |s, p, m, l| avx512::softmax_update(s, p, m, l),
    )
}

/// `softmax(scale · q kᵀ) v` per head on `threads` threads: `q` `heads × n × dk`, `k`
/// `heads × m × dk`, `v` `heads × m × dv` (row-major, contiguous); returns `heads × n × dv`.
/// Callers ensure `m ≥ 1` and that `path` is available.
fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dims: Dims,
    scale: f32,
    path: FlashPath,
    threads: usize,
) -> Vec<f32> {
    let io = Inputs {
        q,
        k,
        v,
        dims,
        scale,
    };
    match path {
        // SAFETY (each arm): callers pass only paths whose CPU features are present
        // (`FlashPath::is_available`).
        #[cfg(target_arch = "x86_64")]
        FlashPath::Avx512 => {
            attention_packed(io, dims.dk, threads, pack_head, |d, t, o, sc| unsafe {
                query_block_avx512(d, t, o, sc)
            })
        }
        #[cfg(target_arch = "x86_64")]
        FlashPath::Avx512Bf16 => attention_packed(
            io,
            dims.dk.next_multiple_of(2),
            threads,
            pack_head_bf16,
            |d, t, o, sc| unsafe { query_block_avx512_bf16(d, t, o, sc) },
        ),
        #[cfg(target_arch = "x86_64")]
        FlashPath::Avx2 => {
            attention_packed(io, dims.dk, threads, pack_head, |d, t, o, sc| unsafe {
                query_block_avx2(d, t, o, sc)
            })
        }
        FlashPath::Portable => {
            attention_packed(io, dims.dk, threads, pack_head, query_block_portable)
        }
    }
}

/// The inputs of [`attention_f32`].
#[derive(Clone, Copy)]
struct Inputs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    dims: Dims,
    scale: f32,
}

/// [`attention_f32`] for one packing: every head's `Kᵀ` and `V` packed by `pack` (elements
/// `E`, `Kᵀ` rows of `width`), then the (head, query block) tasks run by `block`.
fn attention_packed<E: Copy + Default + Send + Sync>(
    io: Inputs<'_>,
    width: usize,
    threads: usize,
    pack: impl Fn(&Dims, &[f32], &[f32], &mut [E], &mut [E]) + Sync,
    block: impl Fn(&Dims, Task<'_, E>, &mut [f32], &mut Scratch<E>) + Sync,
) -> Vec<f32> {
    let Inputs {
        q,
        k,
        v,
        dims,
        scale,
    } = io;
    let Dims {
        heads,
        n,
        m,
        dk,
        dv,
        ..
    } = dims;
    let mut out = vec![0f32; heads * n * dv];
    if heads == 0 || n == 0 {
        return out;
    }
    // Pack every head's Kᵀ and V (a few MB: 12 MB in f32 at Qwen2-VL's vision shape).
    let (kt_len, vp_len) = (dims.kt_len(width), dims.vp_len());
    let mut kt = vec![E::default(); heads * kt_len];
    let mut vp = vec![E::default(); heads * vp_len];
    let packs: Vec<_> = kt
        .chunks_mut(kt_len)
        .zip(vp.chunks_mut(vp_len))
        .enumerate()
        .collect();
    run_tasks(
        packs,
        threads,
        || (),
        |_, (h, (ktd, vpd))| {
            pack(
                &dims,
                &k[h * m * dk..(h + 1) * m * dk],
                &v[h * m * dv..(h + 1) * m * dv],
                ktd,
                vpd,
            )
        },
    );
    let qscale = scale * LOG2_E;
    let mut tasks = Vec::with_capacity(heads * n.div_ceil(QB));
    for (h, oh) in out.chunks_mut(n * dv).enumerate() {
        for (b, ob) in oh.chunks_mut(QB * dv).enumerate() {
            tasks.push((h, b * QB, ob));
        }
    }
    let (kt, vp) = (&kt, &vp);
    run_tasks(
        tasks,
        threads,
        || Scratch::new(&dims, width),
        |sc, (h, q0, ob)| {
            let rows = ob.len() / dv;
            let task = Task {
                q: &q[(h * n + q0) * dk..(h * n + q0 + rows) * dk],
                rows,
                q0,
                kt: &kt[h * kt_len..(h + 1) * kt_len],
                vp: &vp[h * vp_len..(h + 1) * vp_len],
                qscale,
            };
            block(&dims, task, ob, sc)
        },
    );
    out
}

struct FlashAttention {
    scale: f32,
    mask: KeyMask,
    path: FlashPath,
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        sq: &CpuStorage,
        lq: &Layout,
        sk: &CpuStorage,
        lk: &Layout,
        sv: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            contiguous_f32(sq, lq)?,
            contiguous_f32(sk, lk)?,
            contiguous_f32(sv, lv)?,
        );
        let AttentionShape {
            heads,
            n,
            m,
            dk,
            dv,
            out: shape,
        } = AttentionShape::of("flash attention", lq, lk, lv)?;
        let dims = Dims {
            heads,
            n,
            m,
            dk,
            dv,
            mask: self.mask,
        };
        // A small call is not worth a thread start: about 8 M multiply-adds per thread at
        // least (git-base's 197-token tower, 30 M, takes up to 4).
        let work = heads * n * m * dk.max(dv);
        let threads = candle_core::utils::get_num_threads()
            .min(work.div_ceil(1 << 23))
            .max(1);
        let out = attention_f32(q, k, v, dims, self.scale, self.path, threads);
        Ok((CpuStorage::F32(out), shape))
    }
}

/// `softmax(scale · q kᵀ + mask) v` over the last two dimensions: `q` `(..., n, dk)`, `k`
/// `(..., m, dk)`, `v` `(..., m, dv)` with the same leading dimensions, f32 on the CPU (any
/// layout: non-contiguous inputs are copied), `m ≥ 1`; `mask` says which keys each query row
/// sees. Returns `(..., n, dv)`.
///
/// # Errors
/// Mismatched shapes, no keys, or inputs that are not f32 CPU tensors.
pub fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: KeyMask,
) -> Result<Tensor> {
    flash_attention_with(q, k, v, scale, mask, FlashPath::best())
}

/// [`flash_attention`] on a given path (tests and benchmarks run each one).
pub fn flash_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    mask: KeyMask,
    path: FlashPath,
) -> Result<Tensor> {
    if !path.is_available() {
        return Err(crate::ModelError::Unsupported(format!(
            "flash attention path {path:?} needs CPU features this machine lacks"
        )));
    }
    let c = |t: &Tensor| -> Result<Tensor> {
        Ok(if t.is_contiguous() {
            t.clone()
        } else {
            t.contiguous()?
        })
    };
    Ok(c(q)?.apply_op3_no_bwd(&c(k)?, &c(v)?, &FlashAttention { scale, mask, path })?)
}

#[cfg(test)]
mod tests {
    use super::super::max_abs_diff;
    use super::*;
    use crate::layers::kernels::attention::full_attention_composed;
    use candle_core::Device;

    /// The f32 paths this CPU has.
    fn paths() -> Vec<FlashPath> {
        let mut p = vec![FlashPath::Portable];
        #[cfg(target_arch = "x86_64")]
        p.extend([FlashPath::Avx2, FlashPath::Avx512]);
        p.into_iter().filter(|p| p.is_available()).collect()
    }

    /// `t` rounded to bf16 (to nearest even) and back.
    fn bf16_rounded(t: &Tensor) -> Tensor {
        t.to_dtype(candle_core::DType::BF16)
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
    }

    /// The bf16 path, where the CPU has it, against the plain-Rust f32 kernel on the same
    /// inputs rounded to bf16 (the queries after their scaling, as the kernel rounds them), at
    /// shapes like the f32 test's with odd head widths (21, 33, 35: a zero pads the last pair)
    /// and under the causal masks. What remains is the probabilities' rounding to bf16
    /// (relative 2⁻⁹ each, and they sum to 1) and f32 sums in another order: within
    /// 2⁻⁸ · max |v|. Against the unrounded inputs the error is reported, not bounded here
    /// (measured: relative RMS 0.2–0.35 % at scores of a few units, 3.3 % where they reach
    /// thousands).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_path_matches_the_f32_kernel_on_rounded_inputs() {
        if !FlashPath::Avx512Bf16.is_available() {
            eprintln!("no AVX-512 BF16 on this CPU: the bf16 path is not run");
            return;
        }
        let dev = Device::Cpu;
        // (heads, n, m, dk, dv, std, mask)
        let causal = KeyMask::Causal {
            offset: 9,
            period: 40,
        };
        let prefix = KeyMask::PrefixCausal {
            prefix: 30,
            offset: 9,
            period: 40,
        };
        let cases = [
            (2, 7, 33, 80, 80, 1.0f32, KeyMask::All),
            (3, 70, 70, 72, 72, 1.0, KeyMask::All),
            (1, 1, 1, 64, 64, 1.0, KeyMask::All),
            (2, 40, 65, 192, 128, 1.0, KeyMask::All),
            (1, 45, 97, 80, 80, 12.0, KeyMask::All),
            (2, 19, 45, 21, 24, 1.0, KeyMask::All),
            (1, 9, 40, 35, 8, 1.0, KeyMask::All),
            (2, 40, 49, 64, 64, 1.0, causal),
            (2, 40, 49, 33, 48, 1.0, prefix),
        ];
        for (heads, n, m, dk, dv, std, mask) in cases {
            let q = Tensor::randn(0f32, std, (1, heads, n, dk), &dev).unwrap();
            let k = Tensor::randn(0f32, std, (1, heads, m, dk), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (1, heads, m, dv), &dev).unwrap();
            let scale = 1.0 / (dk as f32).sqrt();
            // The kernel rounds the queries after scaling them by `scale · log2 e`: so does the
            // reference (a bf16 value divided and multiplied back in f32 rounds to itself).
            let c = f64::from(scale * LOG2_E);
            let q_rounded = bf16_rounded(&q.affine(c, 0.0).unwrap())
                .affine(1.0 / c, 0.0)
                .unwrap();
            let want = flash_attention_with(
                &q_rounded,
                &bf16_rounded(&k),
                &bf16_rounded(&v),
                scale,
                mask,
                FlashPath::Portable,
            )
            .unwrap();
            let got = flash_attention_with(&q, &k, &v, scale, mask, FlashPath::Avx512Bf16).unwrap();
            let vmax = v
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = max_abs_diff(&got, &want);
            assert!(
                d <= vmax / 256.0,
                "heads {heads} n {n} m {m} dk {dk} dv {dv} {mask:?}: {d} (max |v| {vmax})"
            );
            let exact = flash_attention_with(&q, &k, &v, scale, mask, FlashPath::Portable).unwrap();
            let rms = |t: &Tensor| {
                t.sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    .sqrt()
            };
            eprintln!(
                "bf16 path, heads {heads} n {n} m {m} dk {dk} dv {dv} std {std}: {d:.2e} from the \
                 rounded inputs, relative RMS {:.2e} from f32",
                rms(&(&got - &exact).unwrap()) / rms(&exact)
            );
        }
    }

    /// Every path against the unfused composition (candle GEMMs and the softmax kernel) at
    /// odd and real shapes: queries and keys not multiples of the blocks (1, 7, 33, 70), head
    /// widths of MoonViT (72), Qwen2-VL's vision tower (80), git-base (64) and MLA (192 × 128),
    /// one key, scores large enough that an unstabilised softmax would overflow, query widths
    /// that are not multiples of 8 (20, 36) and narrow values (`dv` 24 and 8: packed `V` rows
    /// of 32 and 16 floats, two column chunks of the AVX2 tile and one).
    /// The tolerance is f32 rounding of the scores, summed in another order on each side:
    /// about 1e-7 of |score|, so 1e-5 for scores of a few units and 1e-3 for the case whose
    /// scores reach about 2000 (measured: up to 1.1e-4 there, below 1e-6 elsewhere).
    #[test]
    fn matches_the_composition_on_every_path() {
        let dev = Device::Cpu;
        let cases = [
            (2, 7, 33, 80, 80, 1.0f32),
            (3, 70, 70, 72, 72, 1.0),
            (1, 1, 1, 64, 64, 1.0),
            (2, 33, 1, 16, 16, 1.0),
            (2, 40, 65, 192, 128, 1.0),
            (1, 45, 97, 80, 80, 12.0),
            (2, 19, 45, 20, 24, 1.0),
            (1, 9, 40, 36, 8, 1.0),
        ];
        for (heads, n, m, dk, dv, std) in cases {
            let tol = if std > 1.0 { 1e-3 } else { 1e-5 };
            let q = Tensor::randn(0f32, std, (1, heads, n, dk), &dev).unwrap();
            let k = Tensor::randn(0f32, std, (1, heads, m, dk), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (1, heads, m, dv), &dev).unwrap();
            let scale = 1.0 / (dk as f32).sqrt();
            let want = full_attention_composed(&q, &k, &v, f64::from(scale)).unwrap();
            for path in paths() {
                let got = flash_attention_with(&q, &k, &v, scale, KeyMask::All, path).unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(
                    d < tol,
                    "{path:?} heads {heads} n {n} m {m} dk {dk} dv {dv}: {d}"
                );
            }
        }
    }

    /// The causal mask against the composition with the same mask as an additive `-inf`
    /// matrix (as the text models build it): a prefill after cached keys, grouped-query rows
    /// (`rep · s` rows whose positions repeat every `s`), a first prefill (no cache), MLA's
    /// widths (192 × 128), and tasks that start mid-period; and causal after a prefix (GIT's
    /// first prefill: 197 image tokens and a text token; a prefix longer than some rows'
    /// causal reach, after cached keys). Measured: below 1e-6.
    #[test]
    fn causal_matches_the_masked_composition() {
        let dev = Device::Cpu;
        // (heads, rep, s, offset, dk, dv, prefix)
        let cases = [
            (2, 3, 37, 20, 64, 64, 0),
            (1, 1, 70, 0, 192, 128, 0),
            (2, 6, 5, 100, 128, 128, 0),
            (3, 2, 33, 31, 80, 80, 0),
            (2, 1, 198, 0, 64, 64, 197),
            (1, 2, 40, 9, 32, 48, 30),
        ];
        for (heads, rep, s, offset, dk, dv, prefix) in cases {
            let (n, m) = (rep * s, offset + s);
            let q = Tensor::randn(0f32, 1.0, (1, heads, n, dk), &dev).unwrap();
            let k = Tensor::randn(0f32, 1.0, (1, heads, m, dk), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (1, heads, m, dv), &dev).unwrap();
            let scale = 1.0 / (dk as f32).sqrt();
            let mask: Vec<f32> = (0..n)
                .flat_map(|r| {
                    (0..m).map(move |j| {
                        if j >= prefix.max(offset + r % s + 1) {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            let mask = Tensor::from_vec(mask, (n, m), &dev).unwrap();
            let scores = q
                .matmul(&k.t().unwrap())
                .unwrap()
                .broadcast_add(&(mask / f64::from(scale)).unwrap())
                .unwrap();
            let want = super::super::scaled_softmax(&scores, scale)
                .unwrap()
                .matmul(&v)
                .unwrap();
            let keys = if prefix == 0 {
                KeyMask::Causal { offset, period: s }
            } else {
                KeyMask::PrefixCausal {
                    prefix,
                    offset,
                    period: s,
                }
            };
            for path in paths() {
                let got = flash_attention_with(&q, &k, &v, scale, keys, path).unwrap();
                let d = max_abs_diff(&got, &want);
                assert!(
                    d < 1e-5,
                    "{path:?} heads {heads} rep {rep} s {s} offset {offset} prefix {prefix}: {d}"
                );
            }
        }
    }

    /// The threads split the work by query block; any thread count gives the same bits, on
    /// the best f32 path and the best bf16 one.
    #[test]
    fn threads_do_not_change_the_result() {
        let mut rng = 1u64;
        let mut next = || {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((rng >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        let dims = Dims {
            heads: 3,
            n: 100,
            m: 77,
            dk: 24,
            dv: 40,
            mask: KeyMask::All,
        };
        let q: Vec<f32> = (0..dims.heads * dims.n * dims.dk).map(|_| next()).collect();
        let k: Vec<f32> = (0..dims.heads * dims.m * dims.dk).map(|_| next()).collect();
        let v: Vec<f32> = (0..dims.heads * dims.m * dims.dv).map(|_| next()).collect();
        for path in [
            FlashPath::best(),
            FlashPath::best_for(AttentionPrecision::Bf16),
        ] {
            for mask in [
                KeyMask::All,
                KeyMask::Causal {
                    offset: 27,
                    period: 50,
                },
            ] {
                let dims = Dims { mask, ..dims };
                let one = attention_f32(&q, &k, &v, dims, 0.3, path, 1);
                for threads in [2, 3, 8] {
                    assert_eq!(one, attention_f32(&q, &k, &v, dims, 0.3, path, threads));
                }
            }
        }
    }

    /// The AVX2 online-softmax update against the plain-Rust one on the same rows: the
    /// first block (`m = -inf`), a block that raises the maximum and one that does not,
    /// scores past the row's last key (`-inf`), and scores at, just above and just below 126
    /// under the maximum, where `exp2` must give 2⁻¹²⁶, a normal number, and exactly 0. The
    /// probabilities agree to a few ulps (the AVX2 polynomial fuses its multiply-adds) and are 0
    /// exactly where the plain-Rust ones are.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_softmax_update_matches_the_portable_one() {
        if !FlashPath::Avx2.is_available() {
            return;
        }
        let mut s = [0f32; KB];
        for (j, x) in s.iter_mut().enumerate() {
            *x = ((j * 37 % 23) as f32 - 11.0) * 0.45;
        }
        let top = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        s[3] = top - 126.0;
        s[4] = top - 125.5;
        s[5] = top - 126.001;
        s[6] = top - 300.0;
        s[KB - 5..].fill(f32::NEG_INFINITY);
        for (m0, l0) in [
            (f32::NEG_INFINITY, 0.0f32),
            (top - 3.0, 2.5),
            (top + 1.0, 7.0),
        ] {
            let (mut pa, mut pb) = ([0f32; KB], [0f32; KB]);
            let (mut ma, mut la, mut mb, mut lb) = (m0, l0, m0, l0);
            let ca = softmax_update(&s, &mut pa, &mut ma, &mut la);
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            let cb = unsafe { avx2::softmax_update(&s, &mut pb, &mut mb, &mut lb) };
            assert_eq!(ma, mb, "m from {m0}");
            assert!(
                (ca - cb).abs() <= 1e-6 * ca.abs(),
                "corr from {m0}: {ca} {cb}"
            );
            assert!((la - lb).abs() <= 1e-6 * la.abs(), "l from {m0}: {la} {lb}");
            for (j, (&a, &b)) in pa.iter().zip(&pb).enumerate() {
                assert_eq!(a == 0.0, b == 0.0, "p[{j}] from {m0}: {a} {b}");
                assert!((a - b).abs() <= 1e-6 * a, "p[{j}] from {m0}: {a} {b}");
            }
            if m0 < top {
                assert_eq!(pb[3], f32::MIN_POSITIVE, "2^-126 from {m0}");
                assert!(pb[4] > f32::MIN_POSITIVE && pb[4].is_normal(), "{}", pb[4]);
                assert_eq!((pb[5], pb[6]), (0.0, 0.0), "below 2^-126 from {m0}");
            }
            assert!(
                pb[KB - 5..].iter().all(|&x| x == 0.0),
                "masked keys from {m0}"
            );
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((2, 5, 8), candle_core::DType::F32, &dev).unwrap();
        let k = Tensor::zeros((2, 6, 8), candle_core::DType::F32, &dev).unwrap();
        let v_bad = Tensor::zeros((2, 7, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(flash_attention(&q, &k, &v_bad, 1.0, KeyMask::All).is_err());
        let k_none = Tensor::zeros((2, 0, 8), candle_core::DType::F32, &dev).unwrap();
        let v_none = Tensor::zeros((2, 0, 8), candle_core::DType::F32, &dev).unwrap();
        assert!(flash_attention(&q, &k_none, &v_none, 1.0, KeyMask::All).is_err());
        let v = Tensor::zeros((2, 6, 3), candle_core::DType::F32, &dev).unwrap();
        assert_eq!(
            flash_attention(&q, &k, &v, 1.0, KeyMask::All)
                .unwrap()
                .dims(),
            &[2, 5, 3]
        );
    }
}
