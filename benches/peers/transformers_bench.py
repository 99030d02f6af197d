"""Hugging Face transformers (PyTorch, CPU, bf16) on a surveil dummy checkpoint: the figures of
benches/compare, measured the way surveil's `test-model --infer` measures them.

Run by benches/compare with the peers' venv (benches/peers/setup.sh):
  $SURVEIL_PEERS/py-venv/bin/python benches/peers/transformers_bench.py \
      --model qwen2-vl-2b-instruct --weights DIR --image frame.png --prompt TEXT --tokens 64

The checkpoint directory holds config.json, the safetensors and tokenizer.json (benches/compare
copies it from the asset cache); the image processors are built with their library defaults,
which are the published checkpoints' settings for these models.

Prints one JSON object on the last line of stdout, with seconds and tokens/s:
load_s, vision_s (vision tower on one frame), ttft_s (preprocessing + vision + prefill + first
token), decode_tok_s (greedy, EOS ignored, between the first and last token of the same
generation), prefill_tok_s (a 512-token text prompt, one forward pass; not for GIT, a
captioner), image_prefill_tok_s
(prompt tokens, image tokens included, over TTFT minus the vision time), prompt_tokens,
new_tokens, peak_rss_mb (VmHWM), rss_after_load_mb, rss_after_unload_mb (after del + gc).
Every timed figure comes after one untimed warm-up generation.
"""

from __future__ import annotations

import argparse
import gc
import json
import time


def status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, choices=["qwen2-vl-2b-instruct", "git-base-coco"])
    ap.add_argument("--weights", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--prefill-tokens", type=int, default=512)
    args = ap.parse_args()

    import torch
    from PIL import Image

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = Image.open(args.image).convert("RGB")
    tok_file = f"{args.weights}/tokenizer.json"
    out: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}

    t0 = time.perf_counter()
    if args.model == "git-base-coco":
        from transformers import (BertTokenizerFast, CLIPImageProcessor, GitForCausalLM,
                                  GitProcessor)
        model = GitForCausalLM.from_pretrained(args.weights, dtype=torch.bfloat16)
        tokenizer = BertTokenizerFast(tokenizer_file=tok_file)
        processor = GitProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": 224},
                                               crop_size={"height": 224, "width": 224}),
            tokenizer=tokenizer)
    else:
        from transformers import (Qwen2TokenizerFast, Qwen2VLForConditionalGeneration,
                                  Qwen2VLImageProcessor)
        model = Qwen2VLForConditionalGeneration.from_pretrained(args.weights,
                                                                dtype=torch.bfloat16)
        tokenizer = Qwen2TokenizerFast(tokenizer_file=tok_file)
        # Qwen2VLProcessor would also want a video processor, which needs torchvision; the
        # processor's work for one image is this image processor plus expanding <|image_pad|>
        # to one token per merged patch
        processor = Qwen2VLImageProcessor()
    model.eval()
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load_mb"] = status_mb("VmRSS")

    def inputs():
        if args.model == "git-base-coco":
            pv = processor(images=image, return_tensors="pt").pixel_values.to(torch.bfloat16)
            ids = torch.tensor([[tokenizer.cls_token_id]])
            return {"pixel_values": pv, "input_ids": ids}
        img = processor(images=[image], return_tensors="pt")
        n_image_tokens = int(img["image_grid_thw"].prod()) // processor.merge_size ** 2
        text = ("<|im_start|>user\n<|vision_start|>" + "<|image_pad|>" * n_image_tokens
                + f"<|vision_end|>{args.prompt}<|im_end|>\n<|im_start|>assistant\n")
        enc = tokenizer([text], return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "pixel_values": img["pixel_values"].to(torch.bfloat16),
                "image_grid_thw": img["image_grid_thw"]}

    def vision(enc):
        if args.model == "git-base-coco":
            return model.git.image_encoder(enc["pixel_values"])
        return model.get_image_features(enc["pixel_values"], enc["image_grid_thw"])

    gen = {"do_sample": False, "num_beams": 1}
    with torch.inference_mode():
        # one untimed generation first: the timed ones below are warm (surveil's --infer
        # figures are its first inference after load, see docs/performance.md)
        model.generate(**inputs(), max_new_tokens=2, min_new_tokens=2, **gen)
        enc = inputs()
        t = time.perf_counter()
        feats = vision(enc)
        out["vision_s"] = time.perf_counter() - t
        out["prompt_tokens"] = int(enc["input_ids"].shape[1])
        if args.model == "git-base-coco":
            # GIT puts the image tokens before the text inside the model
            out["prompt_tokens"] += int(feats.last_hidden_state.shape[1])

        # one generation gives both: a logits processor notes when each token's logits are
        # ready; the first is the time to first token, the rest the decode
        from transformers import LogitsProcessor, LogitsProcessorList

        class Stamps(LogitsProcessor):
            def __init__(self):
                self.times = []

            def __call__(self, input_ids, scores):
                self.times.append(time.perf_counter())
                return scores

        stamps = Stamps()
        t = time.perf_counter()
        enc = inputs()
        res = model.generate(**enc, max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                             logits_processor=LogitsProcessorList([stamps]), **gen)
        out["ttft_s"] = stamps.times[0] - t
        prefill_s = out["ttft_s"] - out["vision_s"]
        out["image_prefill_tok_s"] = out["prompt_tokens"] / prefill_s if prefill_s > 0 else None
        new = int(res.shape[1] - enc["input_ids"].shape[1])
        out["new_tokens"] = new
        out["decode_tok_s"] = ((len(stamps.times) - 1) / (stamps.times[-1] - stamps.times[0])
                               if len(stamps.times) > 1 else None)

        # a captioner takes no prompt: no text-only prefill (as surveil's --prefill-tokens)
        if args.model != "git-base-coco":
            vocab = model.config.get_text_config().vocab_size
            ids = torch.randint(1000, min(vocab, 30000), (1, args.prefill_tokens))
            t = time.perf_counter()
            model(input_ids=ids, use_cache=True)
            out["prefill_tok_s"] = args.prefill_tokens / (time.perf_counter() - t)

    out["peak_rss_mb"] = status_mb("VmHWM")
    del model, enc, res, feats
    gc.collect()
    out["rss_after_unload_mb"] = status_mb("VmRSS")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
