//! How byte counts are printed in human output.
//!
//! Reports use "MB" with one decimal for process and GPU figures (`RSS: 123.4 MB`) and "GiB"
//! with one decimal for model-sized figures (`needs 9.1 GiB`; MB below 1 GiB). "MB" here is
//! 2^20 bytes, as in the psutil-based tools whose tables these replace; JSON output always
//! carries exact bytes.

/// Bytes in one "MB" of the human tables (2^20).
pub const MB: u64 = 1 << 20;
/// Bytes in one GiB (2^30).
pub const GIB: u64 = 1 << 30;

/// `123.4 MB`.
pub fn format_mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / MB as f64)
}

/// `+123.4 MB` / `-5.0 MB` for a signed change.
pub fn format_mb_delta(delta: i64) -> String {
    let sign = if delta < 0 { '-' } else { '+' };
    format!("{sign}{:.1} MB", delta.unsigned_abs() as f64 / MB as f64)
}

/// `9.1 GiB`.
pub fn format_gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB as f64)
}

/// `9.1 GiB` from 1 GiB up, `123.4 MB` below (so small models do not read "0.0 GiB").
pub fn format_size(bytes: u64) -> String {
    if bytes >= GIB {
        format_gib(bytes)
    } else {
        format_mb(bytes)
    }
}

/// `123.4 MB`, or `n/a` when the figure is not known.
pub fn format_mb_opt(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "n/a".to_string(), format_mb)
}

/// The signed difference `after − before`, saturated to the `i64` range.
pub fn signed_delta(before: u64, after: u64) -> i64 {
    if after >= before {
        i64::try_from(after - before).unwrap_or(i64::MAX)
    } else {
        i64::try_from(before - after).map_or(i64::MIN, |d| -d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_one_decimal() {
        assert_eq!(format_mb(0), "0.0 MB");
        assert_eq!(format_mb(123 * MB + 4 * MB / 10 + 1), "123.4 MB");
        assert_eq!(format_mb_delta(-5 * MB as i64), "-5.0 MB");
        assert_eq!(format_mb_delta(3 * MB as i64 / 2), "+1.5 MB");
        assert_eq!(format_gib(9 * GIB + GIB / 10 + 1), "9.1 GiB");
        assert_eq!(format_mb_opt(None), "n/a");
        assert_eq!(format_size(GIB), "1.0 GiB");
        assert_eq!(format_size(GIB - MB), "1023.0 MB");
    }

    #[test]
    fn signed_delta_saturates() {
        assert_eq!(signed_delta(10, 15), 5);
        assert_eq!(signed_delta(15, 10), -5);
        assert_eq!(signed_delta(0, u64::MAX), i64::MAX);
        assert_eq!(signed_delta(u64::MAX, 0), i64::MIN);
    }
}
