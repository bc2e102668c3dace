"""The quantkit command line: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from quantkit import __version__
from quantkit.errors import QuantkitError


class _Group(click.Group):
    """Turns quantkit's own errors into one clear line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except QuantkitError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            sys.exit(130)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="quantkit")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Hugging Face checkpoints to 4-bit group-quantized (W4A16) models, and proof that they are good."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # huggingface_hub 1.x uses httpx, 2.x httpx2; their INFO lines carry upload URLs
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _parse_size(value: str) -> int:
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
    value = value.strip().upper()
    for unit, factor in units.items():
        if value.endswith(unit):
            return int(float(value[: -len(unit)]) * factor)
    return int(value)


@main.command()
@click.argument("model")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--recipe", help="Recipe name (see recipes/) or YAML file. Default: rdna3-w4a16-g32.")
@click.option("--method", type=click.Choice(["rtn", "gptq"]), help="Quantization method.")
@click.option("--bits", type=int, help="Bits per weight (4).")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), help="Inputs per quantization group.")
@click.option("--sym/--asym", default=None, help="Symmetric (uint4b8, zero 8) or asymmetric groups.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16"]), help="Dtype of scales and unquantized tensors.")
@click.option("--skip", multiple=True, help="Keep matching linears unquantized: a glob on module names (*.down_proj) or re:REGEX.")
@click.option("--quantize-lm-head/--keep-lm-head", "quantize_lm_head", default=None,
              help="Quantize lm_head too (tied embeddings: the embedding stays, lm_head becomes its own tensor). "
                   "Default: the recipe's quantize_lm_head (false in the shipped recipes).")
@click.option("--format", "formats", help="Comma-separated outputs: gptq[,gguf].")
@click.option("--checkpoint-format", type=click.Choice(["gptq", "gptq_v2"]), help="GPTQ zero-point convention.")
@click.option("--calib", "calib_text", help="Calibration text (file, JSONL or Hub dataset) for GPTQ.")
@click.option("--calib-samples", type=int, help="Calibration samples for GPTQ.")
@click.option("--calib-seq-len", type=int, help="Tokens per calibration sample.")
@click.option("--max-shard-size", default="1GB", show_default=True, help="Largest output shard.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--push-to", help="After converting, validate (perplexity vs MODEL) and publish to this Hub repo.")
@click.option("--eval-windows", default=40, show_default=True, help="Perplexity windows of the validation before --push-to.")
@click.pass_context
def convert(ctx, model, out, recipe, method, bits, group_size, sym, dtype, skip, quantize_lm_head, formats,
            checkpoint_format, calib_text, calib_samples, calib_seq_len, max_shard_size, force, push_to, eval_windows):
    """Quantize MODEL (Hub id, checkpoint directory or .gguf file) into OUT."""
    from quantkit import convert as converting, recipes

    chosen = recipes.override(
        recipes.load(recipe), method=method, bits=bits, group_size=int(group_size) if group_size else None,
        sym=sym, dtype=dtype, skip=skip or None, quantize_lm_head=quantize_lm_head, formats=formats,
        checkpoint_format=checkpoint_format,
        calib_text=calib_text, calib_samples=calib_samples, calib_seq_len=calib_seq_len,
    )
    manifest = converting.convert(model, out, chosen, force=force, max_shard_bytes=_parse_size(max_shard_size))
    t = manifest["timings"]
    click.echo(f"wrote {out} ({manifest['layers']['quantized']} linears quantized) in {t['total_s']:.1f} s, "
               f"peak RSS {t['peak_rss_mb']:.0f} MB")
    if push_to:
        from quantkit.eval import report, validate
        from quantkit.eval.render import result_text
        from quantkit.hub.push import push

        result = validate.evaluate(out, baseline=model, max_windows=eval_windows, command=_command_line(ctx))
        click.echo(result_text(result))
        report.write_into(out, result)
        published = push(out, push_to)
        click.echo(f"published {published.repo_id} ({published.revision}): {published.commit_url}")


@main.command(name="push")
@click.argument("directory", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repo private (refused if it exists and is public).")
@click.option("--revision", help="Branch to commit to, created from main if missing. Default: main.")
@click.option("--message", help="Commit message.")
def push_cmd(directory, repo_id, private, revision, message):
    """Check DIRECTORY and publish it with its model card to the Hub repo REPO_ID, in one commit."""
    from quantkit.hub import push as publishing

    published = publishing.push(directory, repo_id, private=private, revision=revision, message=message)
    click.echo(f"published {published.repo_id} ({published.revision}): {published.commit_url}")


@main.command(name="inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect_cmd(path, as_json):
    """Describe a checkpoint directory or GGUF file."""
    from quantkit import inspect as inspecting

    summary = inspecting.summarize(path)
    click.echo(json.dumps(summary, indent=2) if as_json else inspecting.render(summary))


def _command_line(ctx: click.Context) -> str:
    """The command as typed, rebuilt from the parsed options (defaults left out), after the environment settings that
    change what it measures, for the eval's records."""
    import shlex

    from quantkit.eval.run_settings import with_settings

    words = ["quantkit", ctx.info_name or "eval"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value == param.default or value is False:
            continue
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif getattr(param, "is_flag", False):
            words.append(param.opts[0])
        else:
            words += [param.opts[0], str(value)]
    return with_settings(" ".join(shlex.quote(w) for w in words))


@main.command(name="eval")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.option("--ppl", "text", help="Text file for perplexity (default: the shipped persuasion.txt).")
@click.option("--no-ppl", is_flag=True, help="Skip perplexity (throughput only).")
@click.option("--baseline", help="Unquantized model to compare with (Hub id, directory or .gguf).")
@click.option("--ctx", "ctx_tokens", default=1024, show_default=True, help="Tokens per perplexity window.")
@click.option("--max-windows", type=int, help="Evaluate at most this many windows.")
@click.option("--device", help="cpu or cuda (default: cuda when present).")
@click.option("--backend", type=click.Choice(["auto", "reference", "kernel", "llama.cpp"]), default="auto", show_default=True,
              help="How the quantized weights run: auto = kernel on a GPU with the kernels built, else reference.")
@click.option("--throughput", is_flag=True, help="Also measure prefill/decode tokens/s beside the bf16 model.")
@click.option("--batch", "batches", default="1,8,32", show_default=True, help="Batch sizes for --throughput.")
@click.option("--prompt-len", default=512, show_default=True, help="Prompt tokens per sequence for --throughput.")
@click.option("--gen-len", default=128, show_default=True, help="Decode steps per sequence for --throughput.")
@click.option("--warmup", default=1, show_default=True, help="Warm-up repeats (dropped) for --throughput.")
@click.option("--repeats", default=5, show_default=True, help="Timed repeats for --throughput (median reported).")
@click.option("--no-cuda-graphs", is_flag=True, help="Time eagerly (launch overhead included).")
@click.option("--compile", "compile_decode", is_flag=True,
              help="torch.compile the decode step (both models) before capturing it: fuses transformers' small ops.")
@click.option("--decode-attention", type=click.Choice(["split", "sdpa"]), default="split", show_default=True,
              help="A decode step's attention on a GPU (both models): quantkit's split-KV kernel or SDPA.")
@click.option("--no-fuse", is_flag=True,
              help="Run q/k/v and gate/up as separate linears (default: one linear each, in both models).")
@click.option("--random-weights", help="Throughput of a random model of this config (config.json path or a name in recipes/configs/).")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="128", show_default=True,
              help="Group size of --random-weights.")
@click.option("--quantize-lm-head", is_flag=True, help="With --random-weights: quantize lm_head too (as convert --quantize-lm-head).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the results JSON here.")
@click.option("--report", "md_path", type=click.Path(path_type=Path), help="Write the Markdown report here.")
@click.option("--plot", "png_path", type=click.Path(path_type=Path), help="Write the tokens/s plot (PNG) here.")
@click.pass_context
def eval_cmd(ctx, directory, text, no_ppl, baseline, **kw):
    """Perplexity (and throughput) of a quantized DIRECTORY beside its baseline.

    With none of --json/--report/--plot, a checkpoint's results go into DIRECTORY as quantkit_eval.json,
    quantkit_eval.md and quantkit_eval.png (what `push` and the model card read).
    """
    from quantkit.eval import report, validate
    from quantkit.eval.render import result_text
    from quantkit.eval.throughput import Settings, parse_batches

    settings = None
    if kw["throughput"]:
        settings = Settings(batches=parse_batches(kw["batches"]), prompt_len=kw["prompt_len"], gen_len=kw["gen_len"],
                            warmup=kw["warmup"], repeats=kw["repeats"], cuda_graphs=not kw["no_cuda_graphs"],
                            compile=kw["compile_decode"], fuse=not kw["no_fuse"],
                            decode_attention=kw["decode_attention"]).validate()
    result = validate.evaluate(
        directory, text=text, baseline=baseline, ctx=kw["ctx_tokens"], max_windows=kw["max_windows"], device=kw["device"],
        backend=kw["backend"], perplexity=not no_ppl and kw["random_weights"] is None, throughput=settings,
        random_weights=kw["random_weights"], group_size=int(kw["group_size"]), quantize_lm_head=kw["quantize_lm_head"],
        command=_command_line(ctx),
    )
    click.echo(result_text(result))
    json_path, md_path, png_path = kw["json_path"], kw["md_path"], kw["png_path"]
    if directory is not None and not (json_path or md_path or png_path):
        written = report.write_into(directory, result)
    else:
        written = report.write(result, json_path=json_path, md_path=md_path, png_path=png_path)
    for path in written:
        click.echo(f"wrote {path}")


@main.command()
@click.option("--out", default="quantkit-demo", show_default=True, type=click.Path(path_type=Path))
@click.option("--recipe", default=None, help="Recipe for the conversion (default: rdna3-w4a16-g32).")
@click.option("--max-windows", type=int, default=40, show_default=True, help="Perplexity windows (1024 tokens).")
def demo(out, recipe, max_windows):
    """End to end on the embedded default: fetch SmolLM2-135M, convert it, compare perplexities."""
    from quantkit import convert as converting, recipes, standin
    from quantkit.eval import report, validate
    from quantkit.eval.render import result_text

    gguf = standin.gguf_path()
    click.echo(f"stand-in model: {gguf} (its dequantized weights are the baseline)")
    manifest = converting.convert(str(gguf), out, recipes.load(recipe), force=True)
    click.echo(f"converted to {out} in {manifest['timings']['total_s']:.1f} s")
    result = validate.evaluate(out, baseline=str(gguf), max_windows=max_windows, command="quantkit demo")
    click.echo(result_text(result))
    for path in report.write_into(out, result):
        click.echo(f"wrote {path}")
