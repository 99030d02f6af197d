"""Unit tests of benches/compare's parsing and bookkeeping (no model, no peers, no build):
  python3 -m unittest discover -s benches -p 'test_*.py'
"""

import importlib.machinery
import importlib.util
import sys
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
_loader = importlib.machinery.SourceFileLoader("compare", str(HERE / "compare"))
_spec = importlib.util.spec_from_loader("compare", _loader)
compare = importlib.util.module_from_spec(_spec)
_loader.exec_module(compare)

MTMD_LOG = """\
encoding image slice...
image slice encoded in 2345 ms
decoding image batch 1/1, n_tokens_batch = 567
image decoded (batch 1/1) in 4100 ms
llama_perf_context_print:        load time =    1234.50 ms
llama_perf_context_print: prompt eval time =    5000.00 ms /   640 tokens (    7.81 ms per token,   128.00 tokens per second)
llama_perf_context_print:        eval time =    3150.00 ms /    63 runs   (   50.00 ms per token,    20.00 tokens per second)
llama_perf_context_print:       total time =    9000.00 ms /   703 tokens
"""


class ParseMtmd(unittest.TestCase):
    def test_figures(self):
        f = compare.parse_mtmd(MTMD_LOG)
        self.assertAlmostEqual(f["vision_s"], 2.345)
        self.assertAlmostEqual(f["load_s"], 1.2345)
        self.assertAlmostEqual(f["image_prefill_tok_s"], 640 / (5.0 - 2.345))
        self.assertAlmostEqual(f["decode_tok_s"], 20.0)
        self.assertAlmostEqual(f["ttft_s"], 5.0)
        self.assertEqual(f["prompt_tokens"], 640)

    def test_batch_encoding_line(self):
        log = "0.19.629 I encoding mtmd batch, n_chunks = 1\n2.11.498 I mtmd batch encoding done in 111868 ms\n"
        self.assertAlmostEqual(compare.parse_mtmd(log)["vision_s"], 111.868)

    def test_missing_lines_give_no_figure(self):
        self.assertEqual(compare.parse_mtmd("nothing here"), {})


class Rounds(unittest.TestCase):
    def run_(self, rnd, stack, contaminated, value=1.0):
        return {"round": rnd, "model": "m", "stack": stack, "quant": "4bit",
                "figures": {"decode_tok_s": value}, "contaminated": contaminated}

    def test_contaminated_round_discarded_whole(self):
        runs = [self.run_(0, "surveil", False, 1), self.run_(0, "llama.cpp", True, 2),
                self.run_(1, "surveil", False, 3), self.run_(1, "llama.cpp", False, 4)]
        clean, notes = compare.clean_runs(runs, 0.05)
        self.assertEqual([r["round"] for r in clean], [1, 1])
        self.assertEqual(len(notes), 1)

    def test_all_contaminated_keeps_all_with_note(self):
        runs = [self.run_(0, "surveil", True), self.run_(1, "surveil", True)]
        clean, notes = compare.clean_runs(runs, 0.05)
        self.assertEqual(len(clean), 2)
        self.assertTrue(any("not fit to quote" in n for n in notes))

    def test_other_models_of_a_contaminated_round_are_kept(self):
        other = dict(self.run_(0, "surveil", False, 9), model="k")
        runs = [self.run_(0, "surveil", True, 1), self.run_(0, "llama.cpp", False, 2),
                self.run_(1, "surveil", False, 3), self.run_(1, "llama.cpp", False, 4), other]
        clean, notes = compare.clean_runs(runs, 0.05)
        self.assertEqual(sorted((r["model"], r["round"]) for r in clean),
                         [("k", 0), ("m", 1), ("m", 1)])
        self.assertEqual(len(notes), 1)
        self.assertIn("m: rounds discarded", notes[0])

    def test_a_first_round_only_run_in_a_bad_round_is_kept_with_a_note(self):
        once = dict(self.run_(0, "surveil", False, 5), quant="bf16")
        runs = [self.run_(0, "surveil", True, 1), once, self.run_(1, "surveil", False, 3)]
        clean, notes = compare.clean_runs(runs, 0.05)
        self.assertEqual(sorted((r["quant"], r["round"]) for r in clean),
                         [("4bit", 1), ("bf16", 0)])
        self.assertTrue(any("m surveil bf16" in n and "not fit to quote" in n for n in notes))

    def test_failed_runs_are_not_figures(self):
        runs = [{"round": 0, "model": "m", "stack": "surveil", "quant": "4bit", "error": "x"},
                self.run_(0, "llama.cpp", False)]
        clean, _ = compare.clean_runs(runs, 0.05)
        self.assertEqual([r["stack"] for r in clean], ["llama.cpp"])

    def test_median(self):
        med = compare.median_figures([{"a": 1.0, "b": None}, {"a": 3.0}, {"a": 2.0, "b": 5}])
        self.assertEqual(med, {"a": 2.0, "b": 5})


class Measured(unittest.TestCase):
    def test_own_cpu_is_not_counted_as_other(self):
        r = compare.run_measured([sys.executable, "-c", "sum(range(3_000_000))"])
        self.assertGreater(r["own_cpu_s"], 0.0)
        self.assertGreaterEqual(r["other_cpu_s"], 0.0)
        self.assertGreater(r["wall_s"], 0.0)

    def test_other_cpu_names_the_busy_process(self):
        # a process outside the measured run burns CPU meanwhile: it is the top other task
        import subprocess
        hog = subprocess.Popen([sys.executable, "-c",
                                "import time\nt = time.time()\nwhile time.time() - t < 3: pass"])
        try:
            time.sleep(0.3)
            r = compare.run_measured([sys.executable, "-c", "import time; time.sleep(1.5)"])
        finally:
            hog.kill()
            hog.wait()
        # other work on a busy machine may outrank it, but the hog is among the top and
        # its seconds are counted as other CPU
        self.assertGreater(r["other_cpu_s"], 0.2)
        hog_s = [s for name, s in r["other_cpu_top"] if name.startswith("python")]
        self.assertTrue(hog_s and hog_s[0] > 0.2, r["other_cpu_top"])
        self.assertEqual(set(r["other_cpu_kinds_s"]), {"irq", "softirq", "steal"})

    def test_failure_raises(self):
        with self.assertRaises(compare.RunFailed):
            compare.run_measured([sys.executable, "-c", "import sys; sys.exit(3)"])

    def test_peak_rss_is_each_runs_own(self):
        # a big run first, then a small one: the small one's peak must not be the big one's
        big = compare.run_measured([sys.executable, "-c", "b = bytearray(300_000_000); print(len(b))"])
        small = compare.run_measured([sys.executable, "-c", "print(1)"])
        self.assertEqual(big["stdout"].strip(), "300000000")
        self.assertGreater(big["max_rss_bytes"], 300_000_000)
        self.assertLess(small["max_rss_bytes"], 100_000_000)

    def test_timeout_kills_and_raises(self):
        with self.assertRaises(compare.RunFailed) as ctx:
            compare.run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
        self.assertIn("timed out", str(ctx.exception))


class Terminate(unittest.TestCase):
    def test_sigterm_stops_a_measured_run_like_ctrl_c(self):
        # A child in flight is killed and reaped, and KeyboardInterrupt reaches the caller
        # (main() then writes the table of the runs so far).
        import os
        import signal
        import threading
        old = signal.signal(signal.SIGTERM, compare._terminate)
        try:
            timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
            timer.start()
            t0 = time.monotonic()
            with self.assertRaises(KeyboardInterrupt):
                compare.run_measured([sys.executable, "-c", "import time; time.sleep(30)"],
                                     timeout=60)
            self.assertLess(time.monotonic() - t0, 10)
            timer.join()
        finally:
            signal.signal(signal.SIGTERM, old)


class TestImage(unittest.TestCase):
    def test_same_pixels_as_surveil(self):
        # crates/surveil-models/src/load/smoke.rs: test_image()
        import tempfile
        import struct
        import zlib
        with tempfile.TemporaryDirectory() as d:
            p = compare.write_test_image(Path(d))
            data = p.read_bytes()
        self.assertTrue(data.startswith(b"\x89PNG\r\n\x1a\n"))
        chunks, pos = {}, 8
        while pos < len(data):
            (n,) = struct.unpack(">I", data[pos:pos + 4])
            kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
            (crc,) = struct.unpack(">I", data[pos + 8 + n:pos + 12 + n])
            self.assertEqual(crc, zlib.crc32(kind + body), kind)
            chunks[kind] = chunks.get(kind, b"") + body
            pos += 12 + n
        self.assertEqual(struct.unpack(">IIBBBBB", chunks[b"IHDR"]), (768, 576, 8, 2, 0, 0, 0))
        raw = zlib.decompress(chunks[b"IDAT"])
        rows = [raw[y * (768 * 3 + 1):(y + 1) * (768 * 3 + 1)] for y in range(576)]
        self.assertTrue(all(r[0] == 0 for r in rows))  # filter "none" on every row
        px = b"".join(r[1:] for r in rows)

        def at(x, y):
            i = (y * 768 + x) * 3
            return tuple(px[i:i + 3])

        self.assertEqual(len(px), 768 * 576 * 3)
        self.assertEqual(at(5, 10), (120, 160, 205))
        self.assertEqual(at(10, 300), (90 + (310 % 30),) * 3)
        self.assertEqual(at(250, 300), (30, 30, 120))
        self.assertEqual(at(510, 479), (140, 20, 20))
        self.assertEqual(at(510, 480), (90 + (990 % 30),) * 3)


if __name__ == "__main__":
    unittest.main()
