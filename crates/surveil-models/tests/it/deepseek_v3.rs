//! DeepSeek-V3 decoder parity tests.
