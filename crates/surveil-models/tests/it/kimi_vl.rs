//! Kimi-VL parity tests.
