"""The benchmark's language-model rows (``--lm``) run end to end in --quick mode (llama_tiny, no torch) and write
the documented JSON / CSV; no timing assertions."""
import argparse

import pytest

from slab_ms import benchmark
from slab_ms.benchmark import lm

from helpers import run_benchmark


@pytest.fixture(scope="module")
def quick_lm(tmp_path_factory):
    return run_benchmark(tmp_path_factory.mktemp("bench_lm"), ["--lm", "--quick", "--repeats", "2", "--warmup", "1"])


def test_lm_rows_have_prefill_decode_and_peak_memory_for_both_forms(quick_lm):
    result, rows = quick_lm
    meta = result["meta"]
    assert meta["lm"] and meta["quick"] and meta["model"] == "llama_tiny" and meta["repeats"] == 2
    assert "torch" not in meta and len(meta["load_average_start"]) == 3
    assert [r["form"] for r in result["results"]] == list(lm.LM_FORMS)
    for row in result["results"]:
        assert (row["prompt_tokens"], row["new_tokens"], row["timed_tokens"]) == (16, 8, 6)
        assert len(row["samples_prefill_ms"]) == len(row["samples_decode_ms_per_token"]) == 2
        assert 0 < row["prefill_min_ms"] <= row["prefill_median_ms"] <= row["prefill_max_ms"]
        assert row["decode_tokens_per_s"] == pytest.approx(1e3 / row["decode_ms_per_token"])
        assert row["decode_tokens_per_s_min"] <= row["decode_tokens_per_s"] <= row["decode_tokens_per_s_max"]
        assert row["peak_rss_mb"] > 100  # a child holding MindSpore's runtime
        assert row["prefill_ratio_vs_rmsnorm_paired"] > 0 and "prefill_ratio_vs_torch" not in row
    base = result["results"][0]
    assert base["prefill_ratio_vs_rmsnorm_paired"] == base["decode_time_ratio_vs_rmsnorm_paired"] == 1.0
    assert [r["form"] for r in rows] == list(lm.LM_FORMS)
    assert float(rows[1]["decode_tokens_per_s"]) == pytest.approx(result["results"][1]["decode_tokens_per_s"])
    text = lm.table(result).splitlines()
    assert text[0].startswith("LLaMA llama_tiny, batch 1: prefill of a 16-token prompt")
    assert text[3].startswith("RMSNorm") and text[4].startswith("PRepBN, folded") and "/torch" not in text[1]


def test_ratios_against_rmsnorm_and_torch():
    """Paired ratios per round against RMSNorm, ratios of the medians against torch, and the table's columns."""
    args = argparse.Namespace(quick=False, repeats=3, warmup=1, runtime_num_threads=4, torch_python="python3")
    samples = {"rmsnorm": [[2.0, 0.20], [4.0, 0.40], [3.0, 0.30]],
               "prepbn_deploy": [[1.0, 0.10], [3.0, 0.20], [3.0, 0.15]],
               "torch": [[1.0, 0.05], [1.0, 0.05], [1.5, 0.10]]}
    ready = {"rmsnorm": {"threads": 4}, "prepbn_deploy": {"threads": 4},
             "torch": {"threads": 2, "torch": "2.x", "transformers": "5.x"}}
    result = lm.summarise(args, "llama_350m", 512, 64, samples, {"rmsnorm": 900.0}, ready, (1, 1, 1), (2, 2, 2))
    rms, folded, torch = result["results"]
    assert folded["prefill_ratio_vs_rmsnorm_paired"] == pytest.approx(0.75)  # median of 0.5, 0.75, 1.0
    assert folded["decode_time_ratio_vs_rmsnorm_paired"] == pytest.approx(0.5)
    assert folded["prefill_ratio_vs_torch"] == pytest.approx(3.0) and rms["decode_time_ratio_vs_torch"] == 6.0
    assert folded["decode_tokens_per_s"] == pytest.approx(1 / 0.15) and torch["decode_tokens_per_s"] == 20.0
    assert rms["peak_rss_mb"] == 900.0 and folded["peak_rss_mb"] is None
    lines = lm.table(result).splitlines()
    assert "prefill /torch" in lines[1] and lines[4].split()[-2:] == ["3.00", "3.00"]
    assert "2 threads (its default)" in lines[-1]


def test_torch_side_gets_the_reference_350m_sizes():
    """The transformers config the torch child builds: the reference llama-350M config.json's values."""
    config = lm.transformers_config("llama_350m")
    assert {k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                   "num_attention_heads", "max_position_embeddings", "rms_norm_eps",
                                   "tie_word_embeddings", "hidden_act", "model_type")} == dict(
        vocab_size=32000, hidden_size=1024, intermediate_size=4096, num_hidden_layers=18, num_attention_heads=8,
        max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
        model_type="llama")


@pytest.mark.parametrize("argv, message", [
    (["--lm", "--lm_new_tokens", "2"], "--lm_new_tokens >= 3"),
    (["--lm", "--lm_prompt", "2000", "--lm_new_tokens", "64"], "must be <= 2048"),
    (["--lm", "--plot", "x.png"], "does not go with --lm"),
])
def test_lm_bad_input_is_one_message_and_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        benchmark.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1], err
