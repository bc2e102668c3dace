"""The README's first command ends in `quantkit demo`: the stand-in fetched, converted with the default recipe and
its perplexity compared with the baseline's, the report written into the converted checkpoint."""

from __future__ import annotations

import json

from click.testing import CliRunner


def test_demo_runs_the_main_job_end_to_end(standin_checkpoint, tmp_path):
    from quantkit.cli import main
    from quantkit.eval.report import PLOT_PNG, REPORT_MD
    from quantkit.manifest import EVAL_JSON

    out = tmp_path / "demo"
    res = CliRunner().invoke(main, ["demo", "--out", str(out), "--max-windows", "1"])
    assert res.exit_code == 0, res.output
    assert "stand-in model:" in res.output and f"converted to {out}" in res.output
    assert (out / "model.safetensors").is_file() or list(out.glob("model-*.safetensors")), sorted(out.iterdir())
    report = json.loads((out / EVAL_JSON).read_text())
    ppl = report["perplexity"]
    base, quant = ppl["baseline"]["ppl"], ppl["quantized"]["ppl"]
    # one window of the shipped text: the 4-bit model a little worse than its baseline, both sane
    assert 5 < base < quant < 2 * base, (base, quant)
    assert f"wrote {out / EVAL_JSON}" in res.output and (out / REPORT_MD).is_file()
    assert not (out / PLOT_PNG).exists()  # no throughput was asked for, so no plot
