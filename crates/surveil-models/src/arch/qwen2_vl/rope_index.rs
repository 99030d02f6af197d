//! Multimodal RoPE position ids: the reference's `get_rope_index`.
//!
//! Text tokens get the same position on the three axes (temporal, height, width) and advance it
//! by one. A run of `<|image_pad|>` (or `<|video_pad|>`) tokens for an image of merged grid
//! `(t, h', w')` gives token `(tt, r, c)` the positions `(p + tt, p + r, p + c)`; afterwards the
//! running position advances by `max(t, h', w')`. Decoding continues from the running position
//! on all three axes, so token `k` of the generation sits at `seq_len + k + delta`.

use super::vision::GridThw;
use crate::{ModelError, Result};

/// Position ids of a prompt on the three M-RoPE axes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RopeIndex {
    /// `[temporal, height, width]`, each one position per prompt token.
    pub positions: [Vec<i64>; 3],
    /// `max(position) + 1 - seq_len` (the reference's `rope_deltas`).
    pub delta: i64,
}

impl RopeIndex {
    /// Position (on all three axes) of the first generated token.
    pub fn next_position(&self) -> i64 {
        self.positions[0].len() as i64 + self.delta
    }
}

/// Which token ids mark vision placeholders, and the merge size.
#[derive(Debug, Clone, Copy)]
pub struct VisionTokens {
    /// `<|image_pad|>`.
    pub image_token_id: u32,
    /// `<|video_pad|>`.
    pub video_token_id: u32,
    /// Spatial merge size (2).
    pub spatial_merge_size: usize,
}

/// Compute M-RoPE positions for one prompt. `image_grids` / `video_grids` are consumed in
/// order, one per run of placeholder tokens. Errors when a run is shorter than its grid needs,
/// when there are more placeholder runs than grids, or when grids are left over.
pub fn rope_index(
    input_ids: &[u32],
    image_grids: &[GridThw],
    video_grids: &[GridThw],
    tokens: VisionTokens,
) -> Result<RopeIndex> {
    let n = input_ids.len();
    let m = tokens.spatial_merge_size.max(1);
    let mut pos: [Vec<i64>; 3] = [
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    ];
    let (mut next_image, mut next_video) = (0usize, 0usize);
    let mut p: i64 = 0;
    let mut i = 0usize;
    while i < n {
        let tok = input_ids[i];
        let (kind, grids, next) = if tok == tokens.image_token_id {
            ("image", image_grids, &mut next_image)
        } else if tok == tokens.video_token_id {
            ("video", video_grids, &mut next_video)
        } else {
            for axis in &mut pos {
                axis.push(p);
            }
            p += 1;
            i += 1;
            continue;
        };
        let g = grids.get(*next).ok_or_else(|| {
            ModelError::InvalidInput(format!(
                "the prompt has more {kind} placeholders than {kind}s: placeholder run {} at token {i} has no {kind} (got {})",
                *next + 1,
                grids.len()
            ))
        })?;
        if g.h % m != 0 || g.w % m != 0 {
            return Err(ModelError::InvalidInput(format!(
                "{kind} grid {g:?} is not divisible by the merge size {m}"
            )));
        }
        let (lt, lh, lw) = (g.t, g.h / m, g.w / m);
        let count = lt * lh * lw;
        let run = input_ids[i..].iter().take_while(|&&t| t == tok).count();
        if run < count {
            return Err(ModelError::InvalidInput(format!(
                "{kind} {} needs {count} placeholder tokens but the prompt has a run of {run} at token {i}",
                *next + 1
            )));
        }
        for tt in 0..lt {
            for r in 0..lh {
                for c in 0..lw {
                    pos[0].push(p + tt as i64);
                    pos[1].push(p + r as i64);
                    pos[2].push(p + c as i64);
                }
            }
        }
        p += lt.max(lh).max(lw) as i64;
        i += count;
        *next += 1;
    }
    if next_image != image_grids.len() {
        return Err(ModelError::InvalidInput(format!(
            "{} images given but the prompt has placeholders for {next_image}",
            image_grids.len()
        )));
    }
    if next_video != video_grids.len() {
        return Err(ModelError::InvalidInput(format!(
            "{} videos given but the prompt has placeholders for {next_video}",
            video_grids.len()
        )));
    }
    Ok(RopeIndex {
        positions: pos,
        delta: p - n as i64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOK: VisionTokens = VisionTokens {
        image_token_id: 9,
        video_token_id: 8,
        spatial_merge_size: 2,
    };

    #[test]
    fn text_only_is_arange() {
        let r = rope_index(&[1, 2, 3], &[], &[], TOK).unwrap();
        assert_eq!(r.positions[0], vec![0, 1, 2]);
        assert_eq!(r.positions[2], vec![0, 1, 2]);
        assert_eq!(r.delta, 0);
    }

    #[test]
    fn image_and_video_runs() {
        // text, image 1x4x6 (2x3 merged), text, video 2x2x2 (t=2, 1x1 merged), text
        let mut ids = vec![1, 2];
        ids.extend([9; 6]);
        ids.push(3);
        ids.extend([8; 2]);
        ids.push(4);
        let r = rope_index(
            &ids,
            &[GridThw::new(1, 4, 6)],
            &[GridThw::new(2, 2, 2)],
            TOK,
        )
        .unwrap();
        assert_eq!(r.positions[0], vec![0, 1, 2, 2, 2, 2, 2, 2, 5, 6, 7, 8]);
        assert_eq!(r.positions[1], vec![0, 1, 2, 2, 2, 3, 3, 3, 5, 6, 6, 8]);
        assert_eq!(r.positions[2], vec![0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 6, 8]);
        assert_eq!(r.delta, 9 - 12);
        assert_eq!(r.next_position(), 9);
    }

    #[test]
    fn mismatched_placeholders_are_errors() {
        // more image tokens than images
        assert!(rope_index(&[9, 9, 9, 9, 1, 9], &[GridThw::new(1, 4, 2)], &[], TOK).is_err());
        // too few placeholder tokens
        assert!(rope_index(&[9, 9, 1], &[GridThw::new(1, 4, 4)], &[], TOK).is_err());
        // images without placeholders
        assert!(rope_index(&[1, 2], &[GridThw::new(1, 2, 2)], &[], TOK).is_err());
    }
}
