//! Attention of a decode step: a few query rows per head against every cached key, with the
//! keys and values read in place from the KV cache's buffer (no copy, no packing), in one
//! pass per head: scores, softmax, weighted sum of values.
//!
//! The tiled kernel ([`super::flash_attention`]) packs each head's `Kᵀ` and `V` before it
//! starts, which pays off when many query rows share them (prefill, vision towers); a decode
//! step has one query row per head (a few with grouped-query attention), so packing would
//! cost as much as the attention itself.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Storage, Tensor};

use super::attention::softmax_row;
#[cfg(target_arch = "x86_64")]
use super::attention::softmax_row_avx512;
use super::flash::run_tasks;
use super::{contiguous_f32, dot, AttentionShape};
use crate::quant::ThreadPool;
use crate::{ModelError, Result};

/// Query rows per head up to which [`decode_attention`] is the better kernel: beyond, the
/// tiled kernel's reuse of packed keys wins.
pub(crate) const DECODE_MAX_ROWS: usize = 16;

/// Multiply-adds (over all heads) below which one thread does the whole call when threads
/// must be started for it (no kernel pool): a decode step's attention over a few thousand
/// cached tokens takes well under a millisecond.
const PARALLEL_MIN_WORK: usize = 1 << 22;

/// Keys per tile of a decode head's weighted sum of values (see `Call::head_avx512`): 128 of
/// MLA's 512-wide latents are 256 KB, a quarter of a 1 MB L2.
const VALUE_TILE: usize = 128;

/// Key width (`dk + dk2`, floats) above which a decode head's scores take four keys at a time
/// in 4 × 4 register tiles instead of sixteen per query row: sixteen keys of 128 (Qwen2-VL,
/// 8 KB) sit in L1 beside the queries, sixteen of MLA's 576 (36 KB) do not.
const WIDE_KEYS: usize = 256;

/// The same threshold on the model's kernel pool, whose idle workers join a job in about a
/// microsecond: 64 Ki multiply-adds take several microseconds on one core.
const POOL_MIN_WORK: usize = 1 << 16;

/// `softmax(scale · q kᵀ) v` over the last two dimensions, every query row seeing every key:
/// `q` `(..., n, dk)`, `k` `(..., m, dk)`, `v` `(..., m, dv)` with the same leading
/// dimensions, f32 on the CPU, `m ≥ 1`. `k` and `v` may be strided views (the filled part of
/// a KV cache) as long as each key's and value's `d` floats are contiguous; other layouts are
/// copied first. Returns `(..., n, dv)`, contiguous. Meant for `n ≤ 16` query rows per head;
/// correct for any `n`. The heads are spread over `pool` (the model's kernel pool) when
/// given, else over scoped threads for long caches only.
///
/// # Errors
/// Mismatched shapes, no keys, or inputs that are not f32 CPU tensors.
pub fn decode_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    pool: Option<&ThreadPool>,
) -> Result<Tensor> {
    Ok(q.contiguous()?.apply_op3_no_bwd(
        &rows_contiguous(k)?,
        &rows_contiguous(v)?,
        &DecodeAttention { scale, pool },
    )?)
}

/// `t` itself when its last dimension is contiguous (a cache view the kernels read in place),
/// else a contiguous copy.
fn rows_contiguous(t: &Tensor) -> Result<Tensor> {
    Ok(if t.stride().last() == Some(&1) {
        t.clone()
    } else {
        t.contiguous()?
    })
}

/// The absorbed attention of Multi-head Latent Attention for one token (DeepSeek-V2, §2.1.2;
/// the DeepSeek-V3 / Kimi-VL reference's absorbed decode): every query head attends over the
/// one cached sequence of latents with scores `scale · (q_latᵢ·c_t + q_ropeᵢ·r_t)` and takes
/// the latents as values. `q_lat` `(heads, rank)`, `q_rope` `(heads, rope)`, `latents`
/// `(m, rank)` and `rope_keys` `(m, rope)`, f32 on the CPU, `m ≥ 1`; the keys may be views with
/// contiguous rows (the filled part of the KV cache, read in place). Returns `(heads, rank)`:
/// `softmax(scores) · latents`. The query heads are split in chunks over `pool` (they share
/// the keys, which each chunk reads once).
///
/// # Errors
/// Mismatched shapes, no keys, or inputs that are not f32 CPU tensors.
pub fn mla_decode_attention(
    q_lat: &Tensor,
    q_rope: &Tensor,
    latents: &Tensor,
    rope_keys: &Tensor,
    scale: f32,
    pool: Option<&ThreadPool>,
) -> Result<Tensor> {
    let (heads, rank) = q_lat.dims2()?;
    let (rope_heads, rope) = q_rope.dims2()?;
    let (m, latent_rank) = latents.dims2()?;
    let (rope_m, rope_width) = rope_keys.dims2()?;
    if rope_heads != heads
        || latent_rank != rank
        || rope_m != m
        || rope_width != rope
        || m == 0
        || heads == 0
        || rank == 0
    {
        return Err(ModelError::InvalidInput(format!(
            "MLA decode attention: q_lat {:?}, q_rope {:?}, latents {:?}, rope keys {:?}",
            q_lat.dims(),
            q_rope.dims(),
            latents.dims(),
            rope_keys.dims()
        )));
    }
    let (q_lat, q_rope) = (q_lat.contiguous()?, q_rope.contiguous()?);
    let (latents, rope_keys) = (rows_contiguous(latents)?, rows_contiguous(rope_keys)?);
    let guards = [&q_lat, &q_rope, &latents, &rope_keys].map(|t| t.storage_and_layout());
    let cpu = |i: usize| -> Result<(&CpuStorage, &Layout)> {
        match &*guards[i].0 {
            Storage::Cpu(s) => Ok((s, guards[i].1)),
            _ => Err(ModelError::InvalidInput(
                "MLA decode attention: inputs must be on the CPU".into(),
            )),
        }
    };
    let ((sq, lq), (sr, lr), (sl, ll), (sk, lk)) = (cpu(0)?, cpu(1)?, cpu(2)?, cpu(3)?);
    let call = Call {
        n: heads,
        m,
        dk: rank,
        dv: rank,
        scale,
        q: contiguous_f32(sq, lq)?,
        k: Rows::new(sl, ll, m, rank)?,
        v: Rows::new(sl, ll, m, rank)?,
        dk2: rope,
        q2: contiguous_f32(sr, lr)?,
        k2: Some(Rows::new(sk, lk, m, rope)?),
    };
    let mut out = vec![0f32; heads * rank];
    call.run(1, &mut out, pool)?;
    Ok(Tensor::from_vec(
        out,
        (heads, rank),
        &candle_core::Device::Cpu,
    )?)
}

struct DecodeAttention<'p> {
    scale: f32,
    pool: Option<&'p ThreadPool>,
}

/// One strided operand (`k` or `v`): its whole buffer, where each head's first row starts,
/// and the distance between rows.
struct Rows<'a> {
    data: &'a [f32],
    heads: Vec<usize>,
    stride: usize,
}

impl<'a> Rows<'a> {
    /// `storage`/`layout` of shape `(lead..., m, d)` with the last dimension contiguous; every
    /// row of every head checked to lie inside the buffer.
    fn new(
        storage: &'a CpuStorage,
        layout: &Layout,
        m: usize,
        d: usize,
    ) -> candle_core::Result<Self> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("decode attention: expected f32 storage")
        };
        let dims = layout.shape().dims();
        let strides = layout.stride();
        let rank = dims.len();
        if d > 1 && strides[rank - 1] != 1 {
            candle_core::bail!("decode attention: rows must be contiguous, strides {strides:?}")
        }
        let stride = strides[rank - 2];
        // Offsets of every head's row 0, leading dimensions in row-major order.
        let mut heads = vec![layout.start_offset()];
        for (&size, &step) in dims[..rank - 2].iter().zip(&strides[..rank - 2]) {
            heads = heads
                .iter()
                .flat_map(|&o| (0..size).map(move |i| o + i * step))
                .collect();
        }
        let end = |o: usize| o + (m - 1) * stride + d;
        if heads.iter().any(|&o| end(o) > data.len()) {
            candle_core::bail!("decode attention: a view reaches past its buffer")
        }
        Ok(Self {
            data,
            heads,
            stride,
        })
    }

    /// Row `t` of head `h`: `d` floats.
    #[inline(always)]
    fn row(&self, h: usize, t: usize, d: usize) -> &[f32] {
        let at = self.heads[h] + t * self.stride;
        &self.data[at..at + d]
    }
}

impl CustomOp3 for DecodeAttention<'_> {
    fn name(&self) -> &'static str {
        "decode-attention"
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
        let q = contiguous_f32(sq, lq)?;
        let AttentionShape {
            heads,
            n,
            m,
            dk,
            dv,
            out: shape,
        } = AttentionShape::of("decode attention", lq, lk, lv)?;
        let mut out = vec![0f32; heads * n * dv];
        if heads == 0 || n == 0 {
            return Ok((CpuStorage::F32(out), shape));
        }
        let call = Call {
            n,
            m,
            dk,
            dv,
            scale: self.scale,
            q,
            k: Rows::new(sk, lk, m, dk)?,
            v: Rows::new(sv, lv, m, dv)?,
            dk2: 0,
            q2: &[],
            k2: None,
        };
        call.run(heads, &mut out, self.pool)?;
        Ok((CpuStorage::F32(out), shape))
    }
}

/// One call: `n` query rows per head (all heads' rows in `q`, contiguous), `m` keys, widths
/// `dk` and `dv`; with `k2`, keys in two parts: a score is `q·k + q2·k2` (`q2` the second
/// `dk2` columns of the queries, laid out as `q`).
struct Call<'a> {
    n: usize,
    m: usize,
    dk: usize,
    dv: usize,
    scale: f32,
    q: &'a [f32],
    k: Rows<'a>,
    v: Rows<'a>,
    dk2: usize,
    q2: &'a [f32],
    k2: Option<Rows<'a>>,
}

impl Call<'_> {
    /// All `heads` into `out` (`heads × n × dv`, zeroed). On `pool`, one part per head, or per
    /// chunk of a head's query rows when there are fewer heads than threads (MLA: one latent
    /// "head" for all query heads); otherwise scoped threads for long caches only.
    fn run(
        &self,
        heads: usize,
        out: &mut [f32],
        pool: Option<&ThreadPool>,
    ) -> candle_core::Result<()> {
        let (n, m, dv) = (self.n, self.m, self.dv);
        let work = heads * n * m * (self.dk + self.dk2 + dv);
        match pool {
            Some(pool) if work >= POOL_MIN_WORK && pool.threads() > 1 => {
                let chunks = pool.threads().div_ceil(heads.max(1)).clamp(1, n);
                let per = n.div_ceil(chunks);
                let parts: Vec<(usize, Range<usize>)> = (0..heads)
                    .flat_map(|h| (0..n).step_by(per).map(move |r| (h, r..(r + per).min(n))))
                    .collect();
                // Each part writes its own rows of `out` (one uncontended lock per part).
                let mut rest = out;
                let mut slots = Vec::with_capacity(parts.len());
                for (_, rows) in &parts {
                    let (mine, others) = std::mem::take(&mut rest).split_at_mut(rows.len() * dv);
                    slots.push(Mutex::new(mine));
                    rest = others;
                }
                pool.run(parts.len(), |i| {
                    let (h, rows) = &parts[i];
                    let mut scratch = vec![0f32; 2 * rows.len() * m];
                    let mut o = slots[i].lock().unwrap_or_else(PoisonError::into_inner);
                    self.head_any(*h, rows.clone(), &mut scratch, &mut o);
                })
                .map_err(|e| candle_core::Error::Msg(format!("decode attention: {e}")))
            }
            _ => {
                let threads = if work < PARALLEL_MIN_WORK {
                    1
                } else {
                    candle_core::utils::get_num_threads()
                };
                // One task per head, each thread with its own scratch scores.
                run_tasks(
                    out.chunks_exact_mut(n * dv).enumerate().collect(),
                    threads,
                    || vec![0f32; 2 * n * m],
                    |scratch, (h, oh)| self.head_any(h, 0..n, scratch, oh),
                );
                Ok(())
            }
        }
    }

    /// Query rows `rows` of head `h`: their scores against the head's keys, softmax per row,
    /// then the rows of `out` (`rows.len() × dv`, zeroed) as probability-weighted sums of its
    /// values. `scratch` holds `2 · rows.len() · m` floats.
    #[inline(always)]
    fn head(&self, h: usize, rows: Range<usize>, scratch: &mut [f32], out: &mut [f32]) {
        let Self { m, dk, dv, dk2, .. } = *self;
        let nr = rows.len();
        let (qh, q2h) = self.queries(h, rows);
        let (scores, probs) = scratch.split_at_mut(nr * m);
        // Each key row is read once for all query rows.
        for t in 0..m {
            let kr = self.k.row(h, t, dk);
            let k2r = self.k2.as_ref().map(|k2| k2.row(h, t, dk2));
            for r in 0..nr {
                let mut score = dot(&qh[r * dk..(r + 1) * dk], kr);
                if let Some(k2r) = k2r {
                    score += dot(&q2h[r * dk2..(r + 1) * dk2], k2r);
                }
                scores[r * m + t] = score;
            }
        }
        for (s, p) in scores.chunks_exact(m).zip(probs.chunks_exact_mut(m)) {
            softmax_row(s, p, self.scale);
        }
        for t in 0..m {
            let vr = self.v.row(h, t, dv);
            for (r, or) in out.chunks_exact_mut(dv).enumerate() {
                let p = probs[r * m + t];
                for (o, &x) in or.iter_mut().zip(vr) {
                    *o += p * x;
                }
            }
        }
    }

    /// The query rows `rows` of head `h`: `(q, q2)` slices of `rows.len() × dk` and
    /// `rows.len() × dk2` floats.
    fn queries(&self, h: usize, rows: Range<usize>) -> (&[f32], &[f32]) {
        let (first, last) = (h * self.n + rows.start, h * self.n + rows.end);
        (
            &self.q[first * self.dk..last * self.dk],
            &self.q2[first * self.dk2..last * self.dk2],
        )
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn head_avx2(&self, h: usize, rows: Range<usize>, scratch: &mut [f32], out: &mut [f32]) {
        // Same code, compiled with 256-bit vectors.
        self.head(h, rows, scratch, out)
    }

    /// [`Self::head`] with AVX-512 and the work blocked for registers: the scores of 16 keys
    /// at a time per query row (16 FMA chains, reduced together by a transpose-add tree into
    /// one vector of 16 scores), and the weighted sum of values with up to six query rows'
    /// 64-wide output slices in 24 accumulators while the value rows stream by (no load or
    /// store of `out` per key). The next keys and values are prefetched: the cache is read
    /// once per step, mostly from memory. Needs `dk` a multiple of 16 and `dv` of 64 (Qwen2
    /// and git heads: 128 and 64); same result as [`Self::head`] up to the order of the
    /// additions.
    ///
    /// # Safety
    /// AVX-512F available; `scratch` holds `2 · n · m` floats and `out` `n · dv`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn head_avx512(
        &self,
        h: usize,
        rows: Range<usize>,
        scratch: &mut [f32],
        out: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let Self { m, dk, dv, dk2, .. } = *self;
        let n = rows.len();
        let (qh, q2h) = self.queries(h, rows);
        let (scores, probs) = scratch.split_at_mut(n * m);
        let mut t = 0;
        if dk + dk2 > WIDE_KEYS {
            // SAFETY: AVX-512F (this function's contract); `scores` holds `n · m` floats.
            t = unsafe { self.scores_blocked_avx512(h, qh, q2h, n, scores) };
        }
        while t + 16 <= m {
            let k: [&[f32]; 16] = std::array::from_fn(|j| self.k.row(h, t + j, dk));
            let k2: Option<[&[f32]; 16]> = self
                .k2
                .as_ref()
                .map(|k2| std::array::from_fn(|j| k2.row(h, t + j, dk2)));
            let next = (t + 32 <= m).then(|| self.k.row(h, t + 16, dk).as_ptr());
            for r in 0..n {
                let qr = &qh[r * dk..(r + 1) * dk];
                let mut acc = [_mm512_setzero_ps(); 16];
                for c in (0..dk).step_by(16) {
                    // SAFETY: `c + 16 ≤ dk`, the width of `qr` and of every key row (`dk` a
                    // multiple of 16, checked by `head_any`).
                    let x = unsafe { load16(qr, c) };
                    for j in 0..16 {
                        // SAFETY: as above.
                        acc[j] = _mm512_fmadd_ps(x, unsafe { load16(k[j], c) }, acc[j]);
                    }
                    if let (0, Some(next)) = (r, next) {
                        // The next block's rows follow this block's in the cache when they
                        // are one head's consecutive keys; a prefetch never faults.
                        for j in 0..16 {
                            let line = next.wrapping_add(j * self.k.stride + c);
                            _mm_prefetch::<_MM_HINT_T0>(line.cast());
                        }
                    }
                }
                if let Some(k2) = &k2 {
                    let q2r = &q2h[r * dk2..(r + 1) * dk2];
                    for c in (0..dk2).step_by(16) {
                        // SAFETY: `c + 16 ≤ dk2`, the width of `q2r` and of every `k2` row (`dk2`
                        // a multiple of 16, checked by `head_any`).
                        let x = unsafe { load16(q2r, c) };
                        for j in 0..16 {
                            // SAFETY: as above.
                            acc[j] = _mm512_fmadd_ps(x, unsafe { load16(k2[j], c) }, acc[j]);
                        }
                    }
                }
                let sums = reduce16(&acc);
                // SAFETY: `r · m + t + 16 ≤ n · m` (`t + 16 ≤ m`, `r < n`).
                unsafe { _mm512_storeu_ps(scores.as_mut_ptr().add(r * m + t), sums) };
            }
            t += 16;
        }
        for t in t..m {
            let kr = self.k.row(h, t, dk);
            let k2r = self.k2.as_ref().map(|k2| k2.row(h, t, dk2));
            for r in 0..n {
                let qr = &qh[r * dk..(r + 1) * dk];
                let mut acc = _mm512_setzero_ps();
                for c in (0..dk).step_by(16) {
                    // SAFETY: `c + 16 ≤ dk`, the width of `qr` and `kr` (a multiple of 16).
                    acc = unsafe { _mm512_fmadd_ps(load16(qr, c), load16(kr, c), acc) };
                }
                if let Some(k2r) = k2r {
                    let q2r = &q2h[r * dk2..(r + 1) * dk2];
                    for c in (0..dk2).step_by(16) {
                        // SAFETY: `c + 16 ≤ dk2`, the width of `q2r` and `k2r` (a multiple of 16).
                        acc = unsafe { _mm512_fmadd_ps(load16(q2r, c), load16(k2r, c), acc) };
                    }
                }
                scores[r * m + t] = _mm512_reduce_add_ps(acc);
            }
        }
        for (s, p) in scores.chunks_exact(m).zip(probs.chunks_exact_mut(m)) {
            // SAFETY: AVX-512F (this function's contract); rows of equal length.
            unsafe { softmax_row_avx512(s, p, self.scale) };
        }
        // Query rows in groups of at most six, as even as can be (8 rows: 4 + 4, not 6 + 2:
        // a group of two reads each value slice for 8 FMAs where four rows give 16).
        let group = n.div_ceil(n.div_ceil(6));
        // The values in tiles of `VALUE_TILE` keys, every pass over one tile before the next:
        // a pass reads a 64-wide slice of each value row, and `dv / 64` passes per row group
        // then find the tile in L2 (MLA's latents, 2 KB a row, fill 1.3 MB at 647 tokens).
        for t0 in (0..m).step_by(VALUE_TILE) {
            let ts = t0..(t0 + VALUE_TILE).min(m);
            for c in (0..dv).step_by(64) {
                let mut r0 = 0;
                while r0 < n {
                    let rows = (n - r0).min(group);
                    let (p, o) = (&probs[r0 * m..], &mut out[r0 * dv..]);
                    let ts = ts.clone();
                    // SAFETY: AVX-512F (this function's contract); `p` holds `rows` rows of
                    // `m` probabilities, `o` `rows` rows of `dv` outputs, `c + 64 ≤ dv`,
                    // `ts` within `0..m`.
                    unsafe {
                        match rows {
                            1 => self.values_avx512::<1>(h, c, ts, p, o),
                            2 => self.values_avx512::<2>(h, c, ts, p, o),
                            3 => self.values_avx512::<3>(h, c, ts, p, o),
                            4 => self.values_avx512::<4>(h, c, ts, p, o),
                            5 => self.values_avx512::<5>(h, c, ts, p, o),
                            _ => self.values_avx512::<6>(h, c, ts, p, o),
                        }
                    }
                    r0 += rows;
                }
            }
        }
    }

    /// The scores of wide keys (`dk + dk2 >` [`WIDE_KEYS`]: MLA's 512 + 64) for the `n` query
    /// rows `q` (and `q2`) of head `h`, into `scores` (`n × m`), four keys at a time: for each
    /// block of four keys, the rows in groups of four, each group a 4 × 4 tile of
    /// accumulators in registers (per 16 columns, four key loads and four query loads feed
    /// sixteen FMAs), reduced together by [`reduce16`]. Sixteen keys per row, as the narrow
    /// path takes them, are 36 KB of MLA keys: with the query rows they overflow a 48 KB L1
    /// and every FMA waits on a load from L2. Returns the keys done (`m` rounded down to 4);
    /// the caller scores the rest.
    ///
    /// # Safety
    /// AVX-512F available; `dk` and `dk2` multiples of 16; `q` holds `n · dk` floats, `q2`
    /// `n · dk2`, `scores` `n · m`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_blocked_avx512(
        &self,
        h: usize,
        q: &[f32],
        q2: &[f32],
        n: usize,
        scores: &mut [f32],
    ) -> usize {
        let m = self.m;
        let mut t = 0;
        while t + 4 <= m {
            let mut r0 = 0;
            while r0 < n {
                // SAFETY: as this function's contract; rows `r0..r0 + R` exist.
                unsafe {
                    match n - r0 {
                        1 => self.score_tile_avx512::<1>(h, t, q, q2, r0, scores),
                        2 => self.score_tile_avx512::<2>(h, t, q, q2, r0, scores),
                        3 => self.score_tile_avx512::<3>(h, t, q, q2, r0, scores),
                        _ => self.score_tile_avx512::<4>(h, t, q, q2, r0, scores),
                    }
                }
                r0 += 4;
            }
            t += 4;
        }
        t
    }

    /// Scores of query rows `r0..r0 + R` against keys `t..t + 4` of head `h` (see
    /// [`Self::scores_blocked_avx512`]).
    ///
    /// # Safety
    /// As [`Self::scores_blocked_avx512`]; `r0 + R ≤ n`, `t + 4 ≤ m`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn score_tile_avx512<const R: usize>(
        &self,
        h: usize,
        t: usize,
        q: &[f32],
        q2: &[f32],
        r0: usize,
        scores: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let Self { m, dk, dk2, .. } = *self;
        let mut acc = [_mm512_setzero_ps(); 16];
        let k: [&[f32]; 4] = std::array::from_fn(|j| self.k.row(h, t + j, dk));
        // The next block's keys, prefetched once per block (by the first row group).
        let next =
            (r0 == 0 && t + 8 <= m).then(|| (self.k.row(h, t + 4, dk).as_ptr(), self.k.stride));
        // SAFETY: `dk` is a multiple of 16 and the width of every key row and of `q`'s rows;
        // rows `r0..r0 + R` of `q` exist (the caller's contract).
        unsafe { tile_products::<R>(&mut acc, k, &q[r0 * dk..(r0 + R) * dk], dk, next) };
        if let Some(k2) = &self.k2 {
            let k2: [&[f32]; 4] = std::array::from_fn(|j| k2.row(h, t + j, dk2));
            // SAFETY: as above, for `dk2`, the `k2` rows and `q2`.
            unsafe { tile_products::<R>(&mut acc, k2, &q2[r0 * dk2..(r0 + R) * dk2], dk2, None) };
        }
        // 128-bit lane `r` of the sums holds row `r0 + r`'s scores of keys `t..t + 4`.
        let sums = reduce16(&acc);
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` holds 16 floats.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), sums) };
        for r in 0..R {
            let at = (r0 + r) * m + t;
            scores[at..at + 4].copy_from_slice(&lanes[4 * r..4 * r + 4]);
        }
    }

    /// Columns `c..c + 64` of `R` output rows, keys `ts`: `o[r][c..] += Σ_{t ∈ ts} p[r][t] ·
    /// v[t][c..]`, the 4 × R accumulators in registers (loaded from `o` and stored back), the
    /// value row `t + 8` prefetched.
    ///
    /// # Safety
    /// AVX-512F available; `p` holds `R · m` floats, `o` `R · dv`, `c + 64 ≤ dv` and `ts`
    /// lies within `0..m`.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn values_avx512<const R: usize>(
        &self,
        h: usize,
        c: usize,
        ts: Range<usize>,
        p: &[f32],
        o: &mut [f32],
    ) {
        use std::arch::x86_64::*;
        let (m, dv) = (self.m, self.dv);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for (r, a) in acc.iter_mut().enumerate() {
            for (i, x) in a.iter_mut().enumerate() {
                // SAFETY: row `r < R` of `o` holds `dv ≥ c + 64` floats (the contract).
                *x = unsafe { load16(&o[r * dv..(r + 1) * dv], c + 16 * i) };
            }
        }
        for t in ts {
            let vr = self.v.row(h, t, dv);
            if t + 8 < m {
                let ahead = vr.as_ptr().wrapping_add(8 * self.v.stride + c);
                for line in 0..4 {
                    // A prefetch never faults.
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(16 * line).cast());
                }
            }
            // SAFETY: `c + 64 ≤ dv`, the width of `vr` (the caller's contract).
            let v = [0, 16, 32, 48].map(|i| unsafe { load16(vr, c + i) });
            for (r, a) in acc.iter_mut().enumerate() {
                let w = _mm512_set1_ps(p[r * m + t]);
                for i in 0..4 {
                    a[i] = _mm512_fmadd_ps(w, v[i], a[i]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            let or = &mut o[r * dv + c..r * dv + c + 64];
            for (i, &x) in a.iter().enumerate() {
                // SAFETY: `or` has 64 floats and `16 i + 16 ≤ 64`.
                unsafe { _mm512_storeu_ps(or.as_mut_ptr().add(16 * i), x) };
            }
        }
    }

    /// [`Self::head`] on the widest vectors this CPU has.
    fn head_any(&self, h: usize, rows: Range<usize>, scratch: &mut [f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if self.dk.is_multiple_of(16)
                && self.dk2.is_multiple_of(16)
                && self.dv.is_multiple_of(64)
                && std::is_x86_feature_detected!("avx512f")
            {
                // SAFETY: the CPU supports AVX-512F (checked just above); the widths are
                // multiples of 16 and 64; `scratch` and `out` are sized by the callers.
                unsafe { self.head_avx512(h, rows, scratch, out) };
                return;
            }
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA (checked just above).
                unsafe { self.head_avx2(h, rows, scratch, out) };
                return;
            }
        }
        self.head(h, rows, scratch, out)
    }
}

/// `acc[4r + j] += q_r · k_j` in 16-lane partial sums, for the `R` query rows of `q` (`R × d`)
/// and the four keys `k` (`d` floats each), 16 columns at a time: four key loads and `R`
/// query loads feed `4R` FMAs. With `next = (first row, stride)`, the four rows of the next
/// key block are prefetched along (a prefetch never faults).
///
/// # Safety
/// AVX-512F available; `d` a multiple of 16; every `k` row holds `d` floats, `q` `R · d`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_products<const R: usize>(
    acc: &mut [std::arch::x86_64::__m512; 16],
    k: [&[f32]; 4],
    q: &[f32],
    d: usize,
    next: Option<(*const f32, usize)>,
) {
    use std::arch::x86_64::*;
    for c in (0..d).step_by(16) {
        // SAFETY: `c + 16 ≤ d`, the width of every key row and query row (the contract).
        let kv = k.map(|kr| unsafe { load16(kr, c) });
        for r in 0..R {
            // SAFETY: as above; row `r < R` of `q`.
            let x = unsafe { load16(&q[r * d..(r + 1) * d], c) };
            for j in 0..4 {
                acc[4 * r + j] = _mm512_fmadd_ps(x, kv[j], acc[4 * r + j]);
            }
        }
        if let Some((first, stride)) = next {
            for j in 0..4 {
                _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(j * stride + c).cast());
            }
        }
    }
}

/// 16 floats of `row` from `c`.
///
/// # Safety
/// AVX-512F available; `c + 16 ≤ row.len()` (checked in debug builds only).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load16(row: &[f32], c: usize) -> std::arch::x86_64::__m512 {
    debug_assert!(c + 16 <= row.len());
    // SAFETY: the caller guarantees 16 floats at `c`.
    unsafe { std::arch::x86_64::_mm512_loadu_ps(row.as_ptr().add(c)) }
}

/// The 16 horizontal sums of `acc` as one vector (lane `j` = Σ `acc[j]`): a transpose-add
/// tree of 45 shuffles and adds instead of 16 separate reductions (8 each).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn reduce16(acc: &[std::arch::x86_64::__m512; 16]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // Pairs: each 128-bit lane keeps (a, b, a, b) partial sums.
    let l1: [__m512; 8] = std::array::from_fn(|i| {
        let (a, b) = (acc[2 * i], acc[2 * i + 1]);
        _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    });
    // Quads: each 128-bit lane keeps the partial sums of four accumulators, in order.
    let l2: [__m512; 4] = std::array::from_fn(|i| {
        let (a, b) = (_mm512_castps_pd(l1[2 * i]), _mm512_castps_pd(l1[2 * i + 1]));
        _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        )
    });
    // Across the 128-bit lanes: lane L of the result holds accumulators 4L..4L+4.
    let fold = |a: __m512, b: __m512| {
        _mm512_add_ps(
            _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
            _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
        )
    };
    fold(fold(l2[0], l2[1]), fold(l2[2], l2[3]))
}

#[cfg(test)]
mod tests {
    use super::super::max_abs_diff;
    use super::*;
    use crate::layers::kernels::attention::full_attention_composed;
    use candle_core::{DType, Device};

    /// Against the unfused composition (candle GEMMs and softmax): contiguous inputs and the
    /// KV cache's strided views (the filled part of a larger buffer), one key, odd widths,
    /// several query rows (grouped-query attention), and a row of large scores.
    #[test]
    fn matches_the_composition_on_cache_views() {
        let dev = Device::Cpu;
        // (batch, heads, query rows, keys, capacity, dk, dv, score scale)
        let cases = [
            (1, 2, 1, 1, 4, 64, 64, 1.0),
            (1, 2, 6, 37, 64, 128, 128, 1.0),
            (2, 3, 1, 200, 256, 64, 64, 1.0),
            (1, 1, 4, 19, 19, 20, 36, 1.0),
            (1, 2, 3, 50, 80, 13, 7, 30.0),
            (1, 4, 17, 33, 40, 16, 8, 1.0),
            (1, 3, 5, 41, 48, 32, 64, 1.0),
            (1, 2, 6, 3, 8, 128, 128, 30.0),
            (1, 2, 7, 70, 80, 64, 128, 1.0),
        ];
        let pool = ThreadPool::new(2).unwrap();
        for (b, h, n, m, cap, dk, dv, mag) in cases {
            let q = (Tensor::randn(0f32, 1.0, (b, h, n, dk), &dev).unwrap() * mag).unwrap();
            let kbuf = Tensor::randn(0f32, 1.0, (b, h, cap, dk), &dev).unwrap();
            let vbuf = Tensor::randn(0f32, 1.0, (b, h, cap, dv), &dev).unwrap();
            let (k, v) = (kbuf.narrow(2, 0, m).unwrap(), vbuf.narrow(2, 0, m).unwrap());
            let scale = 1.0 / (dk as f64).sqrt();
            let expected = full_attention_composed(
                &q,
                &k.contiguous().unwrap(),
                &v.contiguous().unwrap(),
                scale,
            )
            .unwrap();
            let got = decode_attention(&q, &k, &v, scale as f32, None).unwrap();
            assert_eq!(got.dims(), &[b, h, n, dv]);
            let tolerance = if mag > 1.0 { 1e-3 } else { 1e-5 };
            let d = max_abs_diff(&got, &expected);
            assert!(d < tolerance, "case {:?}: {d}", (b, h, n, m, cap, dk, dv));
            // Heads spread over a pool: each head computed as on one thread.
            let pooled = decode_attention(&q, &k, &v, scale as f32, Some(&pool)).unwrap();
            assert_eq!(
                max_abs_diff(&pooled, &got),
                0.0,
                "pooled {:?}",
                (b, h, n, m)
            );
            // Keys given transposed-then-back (a non-row-contiguous view) are copied first.
            let kt = k.t().unwrap().contiguous().unwrap().t().unwrap();
            let d2 = max_abs_diff(
                &decode_attention(&q, &kt, &v, scale as f32, None).unwrap(),
                &got,
            );
            assert!(d2 < 1e-6, "transposed keys: {d2}");
        }
    }

    /// MLA's absorbed decode against the composition it replaces (candle matmuls and
    /// softmax): Kimi-VL's widths (16 heads, rank 512, rope 64), other wide ones and odd ones
    /// (portable path),
    /// keys as views of a larger cache buffer, one thread and a pool (split query heads).
    #[test]
    fn mla_matches_the_composition() {
        let dev = Device::Cpu;
        let pool = ThreadPool::new(2).unwrap();
        // (heads, rank, rope, keys, capacity)
        for (heads, rank, rope, m, cap) in [
            (16, 512, 64, 83, 128),
            (16, 512, 64, 1, 8),
            // Wide keys (the 4 × 4 score tiles) with 3, 2 and 1 rows left in the last group.
            (7, 512, 64, 50, 64),
            (6, 256, 16, 9, 16),
            (5, 304, 16, 6, 6),
            (3, 40, 8, 37, 40),
            (5, 64, 16, 300, 512),
        ] {
            let q_lat = Tensor::randn(0f32, 1.0, (heads, rank), &dev).unwrap();
            let q_rope = Tensor::randn(0f32, 1.0, (heads, rope), &dev).unwrap();
            let lat_buf = Tensor::randn(0f32, 1.0, (cap, rank), &dev).unwrap();
            let rope_buf = Tensor::randn(0f32, 1.0, (cap, rope), &dev).unwrap();
            let (lat, rk) = (
                lat_buf.narrow(0, 0, m).unwrap(),
                rope_buf.narrow(0, 0, m).unwrap(),
            );
            let scale = 1.0 / ((rank / 8 + rope) as f64).sqrt();
            let scores = (q_lat.matmul(&lat.t().unwrap()).unwrap()
                + q_rope.matmul(&rk.t().unwrap()).unwrap())
            .unwrap();
            let want = candle_nn::ops::softmax_last_dim(&(scores * scale).unwrap())
                .unwrap()
                .matmul(&lat)
                .unwrap();
            for p in [None, Some(&pool)] {
                let got =
                    mla_decode_attention(&q_lat, &q_rope, &lat, &rk, scale as f32, p).unwrap();
                assert_eq!(got.dims(), &[heads, rank]);
                let d = max_abs_diff(&got, &want);
                assert!(
                    d < 1e-4,
                    "{:?} pool {}: {d}",
                    (heads, rank, rope, m),
                    p.is_some()
                );
            }
        }
        let q = Tensor::zeros((4, 64), DType::F32, &dev).unwrap();
        let r = Tensor::zeros((4, 16), DType::F32, &dev).unwrap();
        let lat = Tensor::zeros((9, 64), DType::F32, &dev).unwrap();
        let short = Tensor::zeros((8, 16), DType::F32, &dev).unwrap();
        assert!(mla_decode_attention(&q, &r, &lat, &short, 1.0, None).is_err());
        let none = Tensor::zeros((0, 64), DType::F32, &dev).unwrap();
        let no_rope = Tensor::zeros((0, 16), DType::F32, &dev).unwrap();
        let keys = Tensor::zeros((9, 16), DType::F32, &dev).unwrap();
        assert!(mla_decode_attention(&none, &no_rope, &lat, &keys, 1.0, None).is_err());
    }

    #[test]
    fn rejects_mismatched_shapes_and_other_dtypes() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 1, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 5, 8), DType::F32, &dev).unwrap();
        let v = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
        assert!(decode_attention(&q, &k, &v, 1.0, None).is_err());
        let empty = Tensor::zeros((1, 2, 0, 8), DType::F32, &dev).unwrap();
        assert!(decode_attention(&q, &empty, &empty, 1.0, None).is_err());
        let kh = k.to_dtype(DType::F16).unwrap();
        assert!(decode_attention(&q, &kh, &kh, 1.0, None).is_err());
    }
}
