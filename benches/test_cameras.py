"""Unit tests of benches/cameras' own logic (no surveil run): the profiles it writes, the
medians and what a contaminated cell shows. Run: python3 -m unittest discover -s benches -p 'test_*.py'"""

import importlib.machinery
import importlib.util
import tempfile
import tomllib
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
_loader = importlib.machinery.SourceFileLoader("cameras", str(HERE / "cameras"))
_spec = importlib.util.spec_from_loader("cameras", _loader)
cameras = importlib.util.module_from_spec(_spec)
_loader.exec_module(cameras)


def run(mode, n, fps, contaminated=False, rnd=1):
    return {"round": rnd, "mode": mode, "cameras": n, "fps_per_camera": fps, "fps_total": fps * n,
            "frames": 10 * n, "analyses": 0 if mode == "no-vlm" else 2,
            "peak_rss_bytes": 100e6 * n, "model": None if mode == "no-vlm" else "git-base-coco",
            "analysis_s": None if mode == "no-vlm" else 4.0, "wall_s": 10.0, "other_cpu_s": 2.0 if contaminated else 0.0,
            "contaminated": contaminated}


class ProfileText(unittest.TestCase):
    def test_the_base_profile_and_one_camera_table_per_camera(self):
        with tempfile.TemporaryDirectory() as d:
            base = Path(d) / "base.toml"
            base.write_text('[vlm]\nprimary_model = "git-base-coco"\n')
            clip = Path(d) / 'odd "name".avi'
            doc = tomllib.loads(cameras.profile_text(base, clip, 3))
        self.assertEqual(doc["vlm"]["primary_model"], "git-base-coco")
        self.assertEqual([c["name"] for c in doc["cameras"]], ["cam1", "cam2", "cam3"])
        self.assertTrue(all(c["source"] == str(clip) for c in doc["cameras"]))


class Figures(unittest.TestCase):
    def test_the_figures_of_a_summary(self):
        summary = {"cameras": {"a": {"fps": 2.0}, "b": {"fps": 4.0}}, "fps": 6.0, "frames": 20,
                   "vlm": {"calls_by_trigger": {"tool_cue": 2, "periodic": 1}},
                   "memory": {"peak_rss_bytes": 5}, "model": {"model": "m"},
                   "metrics": {"latency": {"vlm": {"mean_ms": 1500.0}}}}
        f = cameras.figures(summary)
        self.assertEqual((f["fps_per_camera"], f["analyses"], f["analysis_s"]), (3.0, 3, 1.5))
        summary.update(model=None, metrics={"latency": {}})
        self.assertIsNone(cameras.figures(summary)["analysis_s"])


class Medians(unittest.TestCase):
    def test_medians_leave_contaminated_runs_out(self):
        runs = [run("no-vlm", 2, 3.0, rnd=1), run("no-vlm", 2, 5.0, rnd=2),
                run("no-vlm", 2, 0.5, contaminated=True, rnd=3), run("vlm", 2, 2.0)]
        rows = cameras.medians(runs)
        self.assertEqual([(r["mode"], r["cameras"]) for r in rows], [("no-vlm", 2), ("vlm", 2)])
        self.assertEqual(rows[0]["fps_per_camera"], 4.0)
        self.assertEqual(rows[0]["runs"], 2)
        self.assertFalse(rows[0]["contaminated"])

    def test_a_cell_with_only_contaminated_runs_shows_them_and_says_so(self):
        rows = cameras.medians([run("vlm", 4, 1.0, contaminated=True),
                                run("vlm", 4, 2.0, contaminated=True)])
        self.assertTrue(rows[0]["contaminated"])
        self.assertEqual(rows[0]["fps_per_camera"], 1.5)
        self.assertIn("(all contaminated)", cameras.table(rows))

    def test_the_table_names_the_model_of_each_row(self):
        text = cameras.table(cameras.medians([run("no-vlm", 1, 6.0), run("vlm", 1, 5.0)]))
        self.assertIn("| none (`--no-vlm`) | 1 | 6.00 | 6.00 | 0 | – |", text)
        self.assertIn("| git-base-coco (dummy weights) | 1 | 5.00 | 5.00 | 2 | 4.0 |", text)


if __name__ == "__main__":
    unittest.main()
