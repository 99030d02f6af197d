//! Kimi-VL: MoonViT vision tower, 2x2 patch-merge projector, DeepSeek-V3 decoder.
