//! The grouped expert GEMV of a mixture-of-experts layer: many (expert, token) pairs in one
//! pool job, reading only the experts that were chosen, each once per call.

use super::matmul::{pack_rows, part_count, part_range, tiles_times_rows, SharedOut};
use super::{Kernel, PackedWeight, QuantError, QuantizedActivations, ThreadPool};

/// One routed pair of a mixture-of-experts layer: activation row `row` goes through expert
/// `expert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpertRoute {
    /// Index into the experts list.
    pub expert: usize,
    /// Row of the activations.
    pub row: usize,
}

/// `y[i] = x[routes[i].row] · W_{routes[i].expert}ᵀ` for every route `i`: `y [routes, n]`
/// row-major f32. Routes of the same expert are computed together (its weight is read once per
/// call, shared by its rows as in the GEMM), experts no route names are not read at all. The
/// work items (expert × tile range) are spread over `pool`.
///
/// Every expert must have the shape `[n, k]` of the first one, with `k` the width of `x`.
///
/// Errors: the path is not available ([`QuantError::KernelUnavailable`]); a route names an
/// expert or row that does not exist, or the experts' shapes differ ([`QuantError::Shape`]);
/// `y.len() != routes × n` ([`QuantError::Length`]); a part panicked
/// ([`QuantError::JobPanicked`]).
pub fn grouped_expert_gemv<W: PackedWeight>(
    kernel: Kernel,
    experts: &[W],
    x: &QuantizedActivations,
    routes: &[ExpertRoute],
    y: &mut [f32],
    pool: &ThreadPool,
) -> Result<(), QuantError> {
    kernel.check()?;
    let Some(first) = experts.first() else {
        return if routes.is_empty() && y.is_empty() {
            Ok(())
        } else {
            Err(QuantError::Shape("routes given but no experts".into()))
        };
    };
    let (n, k) = (first.rows(), first.cols());
    if let Some((i, e)) = experts
        .iter()
        .enumerate()
        .find(|(_, e)| (e.rows(), e.cols()) != (n, k))
    {
        return Err(QuantError::Shape(format!(
            "expert {i} is [{}, {}], expert 0 is [{n}, {k}]",
            e.rows(),
            e.cols()
        )));
    }
    if x.cols() != k {
        return Err(QuantError::Shape(format!(
            "activations have width {}, the experts take {k}",
            x.cols()
        )));
    }
    if let Some(r) = routes
        .iter()
        .find(|r| r.expert >= experts.len() || r.row >= x.rows())
    {
        return Err(QuantError::Shape(format!(
            "route {r:?} outside {} experts × {} rows",
            experts.len(),
            x.rows()
        )));
    }
    if y.len() != routes.len() * n {
        return Err(QuantError::Length {
            what: "expert outputs",
            expected: routes.len() * n,
            found: y.len(),
        });
    }

    // Routes grouped by expert, in order of first use: (expert, [(activation row, output row)]).
    let mut groups: Vec<(usize, Vec<(usize, usize)>)> = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        match groups.iter_mut().find(|(e, _)| *e == r.expert) {
            Some((_, pairs)) => pairs.push((r.row, i)),
            None => groups.push((r.expert, vec![(r.row, i)])),
        }
    }
    // Work items: (group, tile range).
    let tiles = first.tiles();
    let mut items = Vec::new();
    for (g, (e, pairs)) in groups.iter().enumerate() {
        let work = experts[*e].bytes().saturating_mul(pairs.len());
        let parts = part_count(work, tiles, pool.threads());
        items.extend((0..parts).map(|p| (g, part_range(tiles, parts, p))));
    }
    let packed = groups
        .iter()
        .map(|(e, pairs)| pack_rows(kernel, &experts[*e], x, pairs, pool))
        .collect::<Result<Vec<_>, _>>()?;
    let out = SharedOut::new(y, n);
    pool.run(items.len(), |i| {
        let (g, ref range) = items[i];
        let (e, pairs) = &groups[g];
        let packed = packed[g].as_ref();
        // SAFETY: each route's output row belongs to one group, and a group's items cover
        // disjoint tile ranges, so no two items write the same outputs.
        unsafe { tiles_times_rows(kernel, &experts[*e], x, pairs, packed, range.clone(), &out) }
    })
}
