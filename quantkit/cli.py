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
@click.option("--skip", multiple=True, help="Keep matching linears unquantized (glob or regex on module names).")
@click.option("--format", "formats", help="Comma-separated outputs: gptq[,gguf].")
@click.option("--checkpoint-format", type=click.Choice(["gptq", "gptq_v2"]), help="GPTQ zero-point convention.")
@click.option("--calib", "calib_text", help="Calibration text (file, JSONL or Hub dataset) for GPTQ.")
@click.option("--calib-samples", type=int, help="Calibration samples for GPTQ.")
@click.option("--calib-seq-len", type=int, help="Tokens per calibration sample.")
@click.option("--max-shard-size", default="1GB", show_default=True, help="Largest output shard.")
@click.option("--force", is_flag=True, help="Replace an existing output directory.")
@click.option("--push-to", help="After converting, publish to this Hub repo.")
def convert(model, out, recipe, method, bits, group_size, sym, dtype, skip, formats, checkpoint_format,
            calib_text, calib_samples, calib_seq_len, max_shard_size, force, push_to):
    """Quantize MODEL (Hub id, checkpoint directory or .gguf file) into OUT."""
    from quantkit import convert as converting, recipes

    chosen = recipes.override(
        recipes.load(recipe), method=method, bits=bits, group_size=int(group_size) if group_size else None,
        sym=sym, dtype=dtype, skip=skip or None, formats=formats, checkpoint_format=checkpoint_format,
        calib_text=calib_text, calib_samples=calib_samples, calib_seq_len=calib_seq_len,
    )
    manifest = converting.convert(model, out, chosen, force=force, max_shard_bytes=_parse_size(max_shard_size))
    t = manifest["timings"]
    click.echo(f"wrote {out} ({manifest['layers']['quantized']} linears quantized) in {t['total_s']:.1f} s, "
               f"peak RSS {t['peak_rss_mb']:.0f} MB")
    if push_to:
        from quantkit.hub.push import push

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


@main.command(name="eval")
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--ppl", "text", help="Text file for perplexity (default: the shipped persuasion.txt).")
@click.option("--baseline", help="Unquantized model to compare with (Hub id, directory or .gguf).")
@click.option("--ctx", default=1024, show_default=True, help="Tokens per window.")
@click.option("--max-windows", type=int, help="Evaluate at most this many windows.")
@click.option("--device", help="cpu or cuda (default: cuda when present).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the results here.")
def eval_cmd(directory, text, baseline, ctx, max_windows, device, json_path):
    """Perplexity of a quantized DIRECTORY, beside its baseline."""
    from quantkit.eval import validate
    from quantkit.eval.render import perplexity_table
    from quantkit.manifest import write_json

    result = validate.evaluate_perplexity(directory, text=text, baseline=baseline, ctx=ctx,
                                          max_windows=max_windows, device=device)
    click.echo(perplexity_table(result))
    if json_path:
        write_json(json_path, result)


@main.command()
@click.option("--out", default="quantkit-demo", show_default=True, type=click.Path(path_type=Path))
@click.option("--recipe", default=None, help="Recipe for the conversion (default: rdna3-w4a16-g32).")
@click.option("--max-windows", type=int, default=40, show_default=True, help="Perplexity windows (1024 tokens).")
def demo(out, recipe, max_windows):
    """End to end on the embedded default: fetch SmolLM2-135M, convert it, compare perplexities."""
    from quantkit import convert as converting, recipes, standin
    from quantkit.eval import validate
    from quantkit.eval.render import perplexity_table

    gguf = standin.gguf_path()
    click.echo(f"stand-in model: {gguf}")
    manifest = converting.convert(str(gguf), out, recipes.load(recipe), force=True)
    click.echo(f"converted to {out} in {manifest['timings']['total_s']:.1f} s")
    result = validate.evaluate_perplexity(out, baseline=str(gguf), max_windows=max_windows)
    click.echo(perplexity_table(result))
