//! Darknet model files: the `.cfg` network description, the `.weights` parameter file, and the
//! network built from both in candle.

pub mod cfg;
pub mod network;
pub mod weights;

pub use cfg::{Activation, ConvSpec, DarknetConfig, LayerShape, LayerSpec, MaxPoolSpec, YoloSpec};
pub use network::DarknetNetwork;
pub use weights::{ConvParams, DarknetWeights, WeightsHeader};
