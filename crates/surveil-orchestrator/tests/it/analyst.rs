//! The analyst thread against a model that takes fewer images than a job carries.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use image::RgbImage;
use surveil_config::ConfigLoader;
use surveil_models::generation::{GenerationParams, GenerationStats, StopReason};
use surveil_models::load::manager::LoadOptions;
use surveil_models::tokenizer::TextTokenizer;
use surveil_models::vlm::{Generation, GenerationHooks, Vlm, VlmKind, VlmRequest};
use surveil_models::{ModelError, Result as ModelResult};
use surveil_orchestrator::analyst::{AnalysisJob, Analyst, AnalystConfig};
use surveil_orchestrator::event::VlmOutcome;

use crate::pipeline::NoVocab;

/// A captioner like GIT: exactly one image per call, the frame.
struct OneImageCaptioner {
    images_seen: Arc<AtomicUsize>,
    tokenizer: NoVocab,
}

impl Vlm for OneImageCaptioner {
    fn model_id(&self) -> &str {
        "one-image-captioner"
    }
    fn kind(&self) -> VlmKind {
        VlmKind::Captioner
    }
    fn tokenizer(&self) -> &dyn TextTokenizer {
        &self.tokenizer
    }
    fn max_images(&self) -> usize {
        1
    }
    fn analyse(
        &self,
        request: &VlmRequest<'_>,
        _params: &GenerationParams,
        _hooks: &mut dyn GenerationHooks,
    ) -> ModelResult<Generation> {
        self.images_seen
            .store(request.images.len(), Ordering::SeqCst);
        let [frame] = request.images else {
            return Err(ModelError::InvalidInput(format!(
                "captions exactly one image per call, got {}",
                request.images.len()
            )));
        };
        // The frame (first image) is the one described, not the crop after it.
        assert_eq!(frame.width(), 64, "the frame comes first");
        Ok(Generation {
            text: "a man standing in a store".into(),
            reasoning: None,
            reasoning_unfinished: false,
            tokens: vec![1],
            stop_reason: StopReason::StopToken(0),
            timings: GenerationStats::default(),
        })
    }
}

#[test]
fn a_one_image_model_gets_the_frame_of_a_job_with_a_crop() {
    let images_seen = Arc::new(AtomicUsize::new(0));
    let vlm = OneImageCaptioner {
        images_seen: images_seen.clone(),
        tokenizer: NoVocab,
    };
    let testing_config = ConfigLoader::with_env(std::iter::empty::<(String, String)>())
        .profile(Some("testing"))
        .load()
        .unwrap()
        .config;
    let config = AnalystConfig {
        model: "one-image-captioner".into(),
        fallback_models: vec![],
        enable_fallback: false,
        load: LoadOptions::from_config(&testing_config),
        generation: GenerationParams::greedy(8),
        timeout: Duration::from_secs(30),
        constrained: false,
    };
    let mut analyst: Analyst<u32> = Analyst::start_with_vlm(config, Box::new(vlm)).unwrap();
    let job = AnalysisJob {
        // The frame, then a crop of the person of interest.
        images: vec![RgbImage::new(64, 48), RgbImage::new(16, 32)],
        system: "system".into(),
        prompt: "prompt".into(),
        observations: vec![],
        trigger: "tool_cue".into(),
        context: 7,
    };
    assert!(analyst.submit(job).is_none());
    let result = analyst
        .wait_result(Duration::from_secs(30))
        .expect("the analysis finishes");
    assert_eq!(images_seen.load(Ordering::SeqCst), 1);
    assert_eq!(result.record.outcome, VlmOutcome::Ok, "{:?}", result.record);
    assert_eq!(
        result.record.images, 1,
        "the record counts the images the model saw"
    );
    assert_eq!(result.context, 7);
    assert!(result.verdict.is_some());
}

/// A captioner that records the prompts it is given and holds its first call until released.
struct GatedCaptioner {
    prompts: Arc<std::sync::Mutex<Vec<String>>>,
    release: Arc<std::sync::atomic::AtomicBool>,
    tokenizer: NoVocab,
}

impl Vlm for GatedCaptioner {
    fn model_id(&self) -> &str {
        "gated-captioner"
    }
    fn kind(&self) -> VlmKind {
        VlmKind::Captioner
    }
    fn tokenizer(&self) -> &dyn TextTokenizer {
        &self.tokenizer
    }
    fn analyse(
        &self,
        request: &VlmRequest<'_>,
        _params: &GenerationParams,
        _hooks: &mut dyn GenerationHooks,
    ) -> ModelResult<Generation> {
        self.prompts
            .lock()
            .unwrap()
            .push(request.prompt.to_string());
        while !self.release.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(Generation {
            text: "a person".into(),
            reasoning: None,
            reasoning_unfinished: false,
            tokens: vec![1],
            stop_reason: StopReason::StopToken(0),
            timings: GenerationStats::default(),
        })
    }
}

#[test]
fn cameras_are_served_round_robin_with_their_latest_scene() {
    let prompts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let vlm = GatedCaptioner {
        prompts: prompts.clone(),
        release: release.clone(),
        tokenizer: NoVocab,
    };
    let testing_config = ConfigLoader::with_env(std::iter::empty::<(String, String)>())
        .profile(Some("testing"))
        .load()
        .unwrap()
        .config;
    let config = AnalystConfig {
        model: "gated-captioner".into(),
        fallback_models: vec![],
        enable_fallback: false,
        load: LoadOptions::from_config(&testing_config),
        generation: GenerationParams::greedy(8),
        timeout: Duration::from_secs(30),
        constrained: false,
    };
    let mut analyst: Analyst<&'static str> =
        Analyst::start_with_vlm(config, Box::new(vlm)).unwrap();
    let job = |name: &'static str| AnalysisJob {
        images: vec![RgbImage::new(8, 8)],
        system: "system".into(),
        prompt: name.into(),
        observations: vec![],
        trigger: "persons_present".into(),
        context: name,
    };
    assert!(analyst.submit_to(0, job("a1")).is_none());
    // The model holds a1 while the other scenes arrive.
    let start = std::time::Instant::now();
    while prompts.lock().unwrap().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(analyst.submit_to(0, job("a2")).is_none());
    let replaced = analyst.submit_to(0, job("a3")).map(|j| j.context);
    assert_eq!(replaced, Some("a2"), "the camera's newer scene wins");
    assert!(analyst.submit_to(1, job("b1")).is_none());
    assert!(analyst.submit_to(2, job("c1")).is_none());
    assert_eq!(
        analyst.submit_to(1, job("b2")).map(|j| j.context),
        Some("b1")
    );
    assert_eq!(analyst.pending(), 3, "one waiting scene per camera");
    assert_eq!(analyst.superseded_of(0), 1);
    assert_eq!(analyst.superseded_of(1), 1);
    assert_eq!(analyst.superseded_of(2), 0);
    assert_eq!(analyst.superseded(), 2);
    release.store(true, Ordering::SeqCst);
    let mut done = Vec::new();
    while done.len() < 4 {
        let r = analyst
            .wait_result(Duration::from_secs(30))
            .expect("every waiting scene is analysed");
        done.push(r.context);
    }
    // After camera 0's a1: cameras 1 and 2, then camera 0 again.
    assert_eq!(done, ["a1", "b2", "c1", "a3"]);
    assert_eq!(*prompts.lock().unwrap(), ["a1", "b2", "c1", "a3"]);
    let (exit, rest, dropped) = analyst.finish_lanes(false, Duration::from_secs(10));
    assert!(rest.is_empty() && dropped.is_empty());
    assert_eq!(exit.map(|e| e.analyses), Some(4));
}
