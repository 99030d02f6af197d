//! Constant-velocity Kalman filter on boxes, as in ByteTrack / DeepSORT.
//!
//! State `(x, y, a, h, vx, vy, va, vh)`: box centre, aspect ratio `w / h`, height, and their
//! velocities per frame. Noise scales with the box height (`std_weight_position = 1/20`,
//! `std_weight_velocity = 1/160`).

// Small fixed-size matrix algebra reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

use crate::geometry::BBox;

const STD_POS: f64 = 1.0 / 20.0;
const STD_VEL: f64 = 1.0 / 160.0;

type Mat8 = [[f64; 8]; 8];
type Mat4 = [[f64; 4]; 4];

/// Mean and covariance of one box track.
#[derive(Debug, Clone, PartialEq)]
pub struct KalmanBox {
    /// State mean `(x, y, a, h, vx, vy, va, vh)`.
    pub mean: [f64; 8],
    /// State covariance.
    pub cov: Mat8,
}

/// `(centre x, centre y, aspect w/h, height)` of a box.
pub fn bbox_to_xyah(b: &BBox) -> [f64; 4] {
    let w = b.width() as f64;
    let h = (b.height() as f64).max(1e-6);
    let (cx, cy) = b.center();
    [cx as f64, cy as f64, w / h, h]
}

impl KalmanBox {
    /// A new track at the measured box, with zero velocity and wide velocity uncertainty.
    pub fn initiate(m: [f64; 4]) -> Self {
        let h = m[3];
        let std = [
            2.0 * STD_POS * h,
            2.0 * STD_POS * h,
            1e-2,
            2.0 * STD_POS * h,
            10.0 * STD_VEL * h,
            10.0 * STD_VEL * h,
            1e-5,
            10.0 * STD_VEL * h,
        ];
        let mut cov = [[0.0; 8]; 8];
        for i in 0..8 {
            cov[i][i] = std[i] * std[i];
        }
        let mut mean = [0.0; 8];
        mean[..4].copy_from_slice(&m);
        Self { mean, cov }
    }

    /// Advances one frame.
    pub fn predict(&mut self) {
        let h = self.mean[3];
        let std = [
            STD_POS * h,
            STD_POS * h,
            1e-2,
            STD_POS * h,
            STD_VEL * h,
            STD_VEL * h,
            1e-5,
            STD_VEL * h,
        ];
        for i in 0..4 {
            self.mean[i] += self.mean[i + 4];
        }
        // F P: rows i < 4 gain row i + 4.
        let mut fp = self.cov;
        for i in 0..4 {
            for j in 0..8 {
                fp[i][j] += self.cov[i + 4][j];
            }
        }
        // (F P) F^T: columns j < 4 gain column j + 4.
        let mut p = fp;
        for row in p.iter_mut() {
            for j in 0..4 {
                row[j] += row[j + 4];
            }
        }
        for i in 0..8 {
            p[i][i] += std[i] * std[i];
        }
        self.cov = p;
    }

    /// Corrects with a measured box `(x, y, a, h)`.
    pub fn update(&mut self, z: [f64; 4]) {
        let h = self.mean[3];
        let r = [STD_POS * h, STD_POS * h, 1e-1, STD_POS * h];
        let mut s: Mat4 = [[0.0; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                s[i][j] = self.cov[i][j];
            }
            s[i][i] += r[i] * r[i];
        }
        let Some(s_inv) = invert4(&s) else {
            // S is symmetric positive definite by construction; a singular S means the state
            // degenerated (e.g. NaN input). Restart from the measurement.
            *self = Self::initiate(z);
            return;
        };
        // K = P H^T S^-1, P H^T = first 4 columns of P.
        let mut k = [[0.0; 4]; 8];
        for i in 0..8 {
            for j in 0..4 {
                k[i][j] = (0..4).map(|l| self.cov[i][l] * s_inv[l][j]).sum();
            }
        }
        let y: Vec<f64> = (0..4).map(|i| z[i] - self.mean[i]).collect();
        for i in 0..8 {
            self.mean[i] += (0..4).map(|j| k[i][j] * y[j]).sum::<f64>();
        }
        // P' = P - K (H P), H P = first 4 rows of P.
        let mut p = self.cov;
        for i in 0..8 {
            for j in 0..8 {
                p[i][j] -= (0..4).map(|l| k[i][l] * self.cov[l][j]).sum::<f64>();
            }
        }
        self.cov = p;
    }

    /// The mean as a box.
    pub fn bbox(&self) -> BBox {
        let [x, y, a, h] = [self.mean[0], self.mean[1], self.mean[2], self.mean[3]];
        let w = a * h;
        BBox::from_center(x as f32, y as f32, w as f32, h as f32)
    }
}

fn invert4(m: &Mat4) -> Option<Mat4> {
    let mut a = *m;
    let mut inv: Mat4 = [[0.0; 4]; 4];
    for (i, row) in inv.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for col in 0..4 {
        let pivot = (col..4).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[pivot][col].abs().is_nan() || a[pivot][col].abs() <= 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        inv.swap(col, pivot);
        let d = a[col][col];
        for j in 0..4 {
            a[col][j] /= d;
            inv[col][j] /= d;
        }
        for r in 0..4 {
            if r != col {
                let f = a[r][col];
                for j in 0..4 {
                    a[r][j] -= f * a[col][j];
                    inv[r][j] -= f * inv[col][j];
                }
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_constant_velocity() {
        let mut k = KalmanBox::initiate([100.0, 50.0, 0.5, 80.0]);
        for t in 1..=20 {
            k.predict();
            k.update([100.0 + 4.0 * t as f64, 50.0, 0.5, 80.0]);
        }
        assert!((k.mean[4] - 4.0).abs() < 0.1, "vx {}", k.mean[4]);
        // Coasting 5 frames without measurements keeps moving.
        for _ in 0..5 {
            k.predict();
        }
        assert!((k.mean[0] - (180.0 + 20.0)).abs() < 2.0, "x {}", k.mean[0]);
        let b = k.bbox();
        assert!((b.height() - 80.0).abs() < 1.0 && (b.width() - 40.0).abs() < 1.0);
    }

    #[test]
    fn inverse_of_spd_matrix() {
        let m = [
            [4.0, 1.0, 0.0, 0.0],
            [1.0, 3.0, 0.5, 0.0],
            [0.0, 0.5, 2.0, 0.1],
            [0.0, 0.0, 0.1, 1.0],
        ];
        let inv = invert4(&m).unwrap();
        for i in 0..4 {
            for j in 0..4 {
                let v: f64 = (0..4).map(|l| m[i][l] * inv[l][j]).sum();
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        assert!(invert4(&[[0.0; 4]; 4]).is_none());
    }
}
