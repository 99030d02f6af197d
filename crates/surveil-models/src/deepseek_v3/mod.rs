//! DeepSeek-V3-style MoE decoder (Kimi-VL text model): MLA attention, sigmoid-routed experts.
