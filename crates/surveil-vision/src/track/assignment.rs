//! Minimum-cost assignment (Hungarian algorithm) with a cost limit, matching the behaviour of
//! `lap.lapjv(cost, extend_cost=True, cost_limit=thresh)` that ByteTrack uses: a row and a
//! column are only paired when their cost is `<= thresh`, and the total cost is minimal.

/// Result of [`linear_assignment`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    /// `(row, col)` pairs.
    pub matches: Vec<(usize, usize)>,
    /// Rows left unmatched, ascending.
    pub unmatched_rows: Vec<usize>,
    /// Columns left unmatched, ascending.
    pub unmatched_cols: Vec<usize>,
}

/// Optimal assignment of `cost` (rows x cols, all rows the same length `cols`) where pairs
/// costing more than `thresh` are never made. Non-finite costs count as "never".
pub fn linear_assignment(cost: &[Vec<f64>], cols: usize, thresh: f64) -> Assignment {
    let rows = cost.len();
    if rows == 0 || cols == 0 {
        return Assignment {
            matches: Vec::new(),
            unmatched_rows: (0..rows).collect(),
            unmatched_cols: (0..cols).collect(),
        };
    }
    // Extended square matrix: leaving a row or a column unmatched costs thresh / 2 each, so a
    // pair is worth making only when its cost is below thresh.
    let n = rows + cols;
    let never = thresh.abs() * 4.0 + 1e6;
    let half = thresh / 2.0;
    let mut ext = vec![vec![0.0; n]; n];
    for (i, row) in ext.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            *v = match (i < rows, j < cols) {
                (true, true) => {
                    let c = cost[i][j];
                    if c.is_finite() && c <= thresh {
                        c
                    } else {
                        never
                    }
                }
                (false, false) => 0.0,
                _ => half,
            };
        }
    }
    let assign = hungarian(&ext);
    let mut out = Assignment::default();
    let mut col_used = vec![false; cols];
    for (i, &j) in assign.iter().enumerate().take(rows) {
        if j < cols && cost[i][j].is_finite() && cost[i][j] <= thresh {
            out.matches.push((i, j));
            col_used[j] = true;
        } else {
            out.unmatched_rows.push(i);
        }
    }
    out.unmatched_cols = (0..cols).filter(|&j| !col_used[j]).collect();
    out
}

/// Hungarian algorithm (Kuhn–Munkres with potentials, O(n^3)) for a square matrix; returns
/// the column assigned to each row.
fn hungarian(a: &[Vec<f64>]) -> Vec<usize> {
    let n = a.len();
    // 1-based arrays as in the classic formulation; p[j] = row matched to column j.
    let mut u = vec![0.0; n + 1];
    let mut v = vec![0.0; n + 1];
    let mut p = vec![0usize; n + 1];
    let mut way = vec![0usize; n + 1];
    for i in 1..=n {
        p[0] = i;
        let mut j0 = 0;
        let mut minv = vec![f64::INFINITY; n + 1];
        let mut used = vec![false; n + 1];
        loop {
            used[j0] = true;
            let i0 = p[j0];
            let mut delta = f64::INFINITY;
            let mut j1 = 0;
            for j in 1..=n {
                if !used[j] {
                    let cur = a[i0 - 1][j - 1] - u[i0] - v[j];
                    if cur < minv[j] {
                        minv[j] = cur;
                        way[j] = j0;
                    }
                    if minv[j] < delta {
                        delta = minv[j];
                        j1 = j;
                    }
                }
            }
            for j in 0..=n {
                if used[j] {
                    u[p[j]] += delta;
                    v[j] -= delta;
                } else {
                    minv[j] -= delta;
                }
            }
            j0 = j1;
            if p[j0] == 0 {
                break;
            }
        }
        loop {
            let j1 = way[j0];
            p[j0] = p[j1];
            j0 = j1;
            if j0 == 0 {
                break;
            }
        }
    }
    let mut ans = vec![0usize; n];
    for j in 1..=n {
        if p[j] > 0 {
            ans[p[j] - 1] = j - 1;
        }
    }
    ans
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_global_optimum_not_the_greedy_one() {
        // Greedy would take (0,0)=0.1 and then (1,1)=0.9 (> thresh): one match.
        // The optimum pairs (0,1) and (1,0): total 0.5, two matches.
        let cost = vec![vec![0.1, 0.2], vec![0.3, 0.9]];
        let a = linear_assignment(&cost, 2, 0.8);
        assert_eq!(a.matches, vec![(0, 1), (1, 0)]);
        assert!(a.unmatched_rows.is_empty() && a.unmatched_cols.is_empty());
    }

    #[test]
    fn respects_the_threshold_and_rectangles() {
        let cost = vec![vec![0.5, 0.95, 0.99]];
        let a = linear_assignment(&cost, 3, 0.8);
        assert_eq!(a.matches, vec![(0, 0)]);
        assert_eq!(a.unmatched_cols, vec![1, 2]);
        let a = linear_assignment(&[vec![0.9], vec![0.85]], 1, 0.8);
        assert!(a.matches.is_empty());
        assert_eq!(a.unmatched_rows, vec![0, 1]);
        let a = linear_assignment(&[], 2, 0.8);
        assert_eq!(a.unmatched_cols, vec![0, 1]);
    }

    #[test]
    fn brute_force_agrees_on_small_matrices() {
        // Deterministic pseudo-random 4x4 costs; compare the total with all permutations.
        let mut seed = 12345u64;
        let mut rnd = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        for _ in 0..50 {
            let cost: Vec<Vec<f64>> = (0..4).map(|_| (0..4).map(|_| rnd()).collect()).collect();
            let a = hungarian(&cost);
            let got: f64 = a.iter().enumerate().map(|(i, &j)| cost[i][j]).sum();
            let mut best = f64::INFINITY;
            let mut perm = [0, 1, 2, 3];
            permutations(&mut perm, 0, &mut |p| {
                best = best.min((0..4).map(|i| cost[i][p[i]]).sum());
            });
            assert!((got - best).abs() < 1e-9, "{got} vs {best}");
        }
    }

    fn permutations(p: &mut [usize; 4], k: usize, f: &mut dyn FnMut(&[usize; 4])) {
        if k == p.len() {
            f(p);
            return;
        }
        for i in k..p.len() {
            p.swap(k, i);
            permutations(p, k + 1, f);
            p.swap(k, i);
        }
    }
}
