"""The README's CPU speed tables are the rendering of the committed benchmark JSON.

``benchmarks/readme.py --out benchmarks/results/cpu.json`` measures; ``--render`` writes the
README's ``### CPU speed`` subsection from the JSON. These tests run no benchmark: they check
that the README and the committed JSON agree, and that the renderer, the region replacement
and ``--compare`` do what they say on small synthetic inputs.
"""
import copy
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import readme  # noqa: E402

CPU_JSON = os.path.join(ROOT, "benchmarks", "results", "cpu.json")
README = os.path.join(ROOT, "README.md")


def _readme_text():
    with open(README, encoding="utf-8") as f:
        return f.read()


def test_readme_equals_the_rendering_of_the_committed_json():
    if not os.path.exists(CPU_JSON):
        pytest.skip("benchmarks/results/cpu.json does not exist yet: run `python benchmarks/readme.py "
                    "--out benchmarks/results/cpu.json --render` on a quiet machine and commit both")
    diff = readme.check(CPU_JSON, README)
    assert not diff, ("README.md's CPU speed tables differ from benchmarks/results/cpu.json; run "
                      "`python benchmarks/readme.py --render`:\n" + "\n".join(diff[:60]))


def test_readme_has_one_generated_region_inside_performance_before_the_uci_table():
    text = _readme_text()
    start, end = readme.region_bounds(text)
    lines = text.split("\n")
    perf = lines.index("## Performance")
    uci = next(i for i, line in enumerate(lines) if line.startswith("### UCI regression quality"))
    assert perf < start < end <= uci, "the generated region must sit in ## Performance, before the UCI table"
    region = "\n".join(lines[start:end])
    assert region.count("| --- |") >= 2, "the CPU speed region lost its tables"


def synthetic():
    """A small measurement: two thread counts, a few numbers, the rest missing."""
    one = {
        "svi": {
            "predict": {
                "matmul_gflops": 100.0,
                "a": {"pyrobdl_s": 0.025, "pyro_predictive_s": 2.2, "speedup_vs_pyro": 88.0,
                      "pyrobdl_first_call_s": 0.04, "pyro_predictive_first_call_s": 2.4,
                      "speedup_vs_pyro_first_calls": 60.0},
                "b": {"pyrobdl_s": 0.1, "pyro_predictive_s": 0.41, "speedup_vs_pyro": 4.1,
                      "pyrobdl_gflops": 50.0, "floor_gflops": 10.0},
            },
            "memory": {"default_extra_mb": 13.2, "naive_one_pass_extra_mb": 387.0},
            "train": {
                "floor_det_mlp_steps_s": 1000.0,
                "pyrobdl_meanfield_fixed_noise_reparam_P1_steps_s": 625.0,
                "ratio_floor_over_pyrobdl_meanfield_fixed_noise_reparam_P1": 1.6,
                "pyrobdl_meanfield_learned_noise_reparam_P1_steps_s": 435.0,
                "ratio_floor_over_pyrobdl_meanfield_learned_noise_reparam_P1": 2.3,
            },
        },
        "baselines": {
            "n_train": 500,
            "settings": {"uci": {"epochs": 40, "batch_size": 32}, "full_batch": {"epochs": 200, "batch_size": None}},
            "ensemble": {"uci": {"vec": {"median_ms": 30.0}, "loop": {"median_ms": 120.0}, "ratio_loop": 4.0}},
            "dropout": {"10": {"batched": {"median_ms": 1.0}, "a": {"median_ms": 13.5}, "ratio_a": 13.5}},
        },
    }
    two = copy.deepcopy(one)
    two["svi"]["predict"]["b"].update(pyrobdl_s=0.08, speedup_vs_pyro=3.0)
    two["svi"]["train"]["ratio_floor_over_pyrobdl_meanfield_fixed_noise_reparam_P1"] = 2.5
    two["svi"]["train"]["pyrobdl_meanfield_fixed_noise_reparam_P1_steps_s"] = 400.0
    two["baselines"]["dropout"]["10"].update(ratio_a=17.7, a={"median_ms": 17.7})
    del two["svi"]["memory"]
    return {
        "schema": readme.SCHEMA,
        "command": "python benchmarks/readme.py --out benchmarks/results/cpu.json",
        "quick": False,
        "conditions": {"date": "2030-01-02T03:04:05+00:00", "git_commit": "0123456789abcdef", "cpu_model": "Test CPU",
                       "cpu_count": 2, "cpus_usable": 2, "torch": "2.13.0+cpu", "pyro": "1.9.2", "python": "3.11.7",
                       "env_at_start": {}, "load_average_start": [0.1, 0.1, 0.1]},
        "protocol": {"repeats": 5},
        "threads": {"2": two, "1": one},
    }


def test_renderer_writes_the_expected_rows():
    out = readme.render(synthetic())
    lines = out.splitlines()
    assert lines[0] == readme.BEGIN
    assert "on 2030-01-02 at commit `0123456`: Test CPU, 2 cores, torch 2.13.0+cpu" in out
    assert "median of 5 timed calls after one warm-up call" in out
    warm = ("both warm: built once, one warm-up call each, then paired rounds (one call of each, back to back), "
            "the median ratio; `Predictive(parallel=False)`")
    expected = [
        "| what | setting | 1 thread | 2 threads | goal |",
        "| predictive, S=1,000 samples, N=100 inputs: `predict` vs `pyro.infer.Predictive` | " + warm
        + " | **88×** (0.025 s vs 2.2 s) | **88×** (0.025 s vs 2.2 s) | ≥ 20×: met |",
        "| predictive, S=100, N=10,000: `predict` vs `pyro.infer.Predictive` | " + warm
        + " | **4.1×** (0.1 s vs 0.41 s) | **3.0×** (0.08 s vs 0.41 s) | ≥ 3.5×: met at 1 thread only |",
        "| `predict`'s arithmetic rate, S=100, N=10,000 | warm; beside the rate of a one-shot batched pass of "
        "pre-sampled weights and of a square matmul, same process | 50 GFLOP/s; 5.0× the rate of a one-shot "
        "`baddbmm` pass (10); 50% of a 2,000² matmul's (100) | 50 GFLOP/s; 5.0× the rate of a one-shot `baddbmm` "
        "pass (10); 50% of a 2,000² matmul's (100) |  |",
        "| `predict`'s extra peak memory, S=100, N=10,000 | default bound (512 MiB); each in a fresh process | "
        "+13 MB (one-shot batched pass +387 MB) | — |  |",
        "| mean-field SVI, N=1,000 full batch: time per step / the floor's (a deterministic MLP, squared error, "
        "Adam) | fixed noise, `Gaussian(scale=0.1)`, `estimator=\"reparam\"` (the default) | **1.6×** (625 vs "
        "1,000 steps/s) | **2.5×** (400 vs 1,000 steps/s) | ≤ 2×: met at 1 thread only |",
        "| the same | learned noise, `Gaussian()` (the default), `estimator=\"reparam\"` (the default) | **2.3×** "
        "(435 vs 1,000 steps/s) | **2.3×** (435 vs 1,000 steps/s) | ≤ 2×: not met |",
        "| the same | fixed noise, `Gaussian(scale=0.1)`, `estimator=\"local\"` | — | — |  |",
        "| deep ensemble (5 members), time per epoch: a plain loop over the members / `DeepEnsemble` (500 training "
        "points) | UCI settings: 40 epochs, batch 32; the loop with torch's default Adam | **4.0×** (120 ms vs "
        "30 ms) | **4.0×** (120 ms vs 30 ms) | ≥ 3×: met |",
        "| MC-dropout predict, S=100: 100 forward passes with `nn.Dropout` on / `predict` | N=10 test inputs | "
        "**13.5×** (14 ms vs 1 ms) | **17.7×** (18 ms vs 1 ms) | ≥ 10×: met |",
    ]
    for row in expected:
        assert row in lines, f"missing row:\n{row}\n\nrendered:\n{out}"
    assert "Quick mode" not in out
    assert "Quick mode" in readme.render(dict(synthetic(), quick=True))


def test_rendered_region_is_markdown_the_docs_can_convert():
    """docs/which_method.rst renders the README's Performance section with the docs' converter."""
    pytest.importorskip("sphinx")
    sys.path.insert(0, os.path.join(ROOT, "docs", "_ext"))
    try:
        import pyrobdl_docs
    finally:
        sys.path.pop(0)
    rst = pyrobdl_docs.markdown_to_rst(readme.render(synthetic()))
    assert rst.count(".. list-table::") == 2


def test_replace_region_touches_nothing_else(tmp_path):
    text = ("## Performance\n\nintro\n\n" + readme.BEGIN + "\n\nold table\n\n### GPU\n\ngpu text\n\n"
            "### UCI regression quality\n\nuci\n")
    region = readme.render(synthetic())
    new = readme.replace_region(text, region)
    assert new.startswith("## Performance\n\nintro\n\n" + region + "\n### GPU\n\ngpu text\n\n### UCI")
    assert readme.extract_region(new) == region
    assert readme.replace_region(new, region) == new  # idempotent
    # --check / --render through the command line, on files
    path = tmp_path / "m.json"
    path.write_text(__import__("json").dumps(synthetic()), encoding="utf-8")
    md = tmp_path / "README.md"
    md.write_text(text, encoding="utf-8")
    assert readme.main(["--check", str(path), "--readme", str(md)]) == 1
    assert readme.main(["--render", str(path), "--readme", str(md)]) == 0
    assert readme.main(["--check", str(path), "--readme", str(md)]) == 0
    assert md.read_text(encoding="utf-8") == new


def test_compare_flags_numbers_outside_twenty_percent():
    old = synthetic()
    new = copy.deepcopy(old)
    new["threads"]["1"]["svi"]["predict"]["a"]["speedup_vs_pyro"] = 88.0 * 0.75  # -25%: flagged
    new["threads"]["2"]["baselines"]["dropout"]["10"]["ratio_a"] = 17.7 * 1.15  # +15%: fine
    lines, flagged = readme.compare(old, new)
    assert flagged == 1
    bad = [line for line in lines if "outside" in line and "ratio(s)" not in line]
    assert len(bad) == 1 and "S=1000 N=100: speed-up vs Predictive (warm)" in bad[0] and "0.75" in bad[0]
    assert readme.compare(old, old)[1] == 0
    # absolute times and rates move with the machine: listed, never flagged
    slower = copy.deepcopy(old)
    slower["threads"]["1"]["svi"]["predict"]["a"]["pyrobdl_s"] *= 2
    lines, flagged = readme.compare(old, slower)
    assert flagged == 0 and any("pyrobdl s" in ln and "absolute" in ln and "2.00" in ln for ln in lines)
