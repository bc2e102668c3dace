"""The model card (README.md) of a published artifact, rendered through huggingface_hub's card API.

Every value comes from the artifact: config.json's quantization_config, quantkit_manifest.json and
quantkit_eval.json. Eval sections are optional; the card shows what the eval JSON holds. Metrics go both
into Markdown tables and into the card's `model-index` metadata (huggingface_hub.EvalResult).
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from quantkit.hub.artifact import Artifact

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
THROUGHPUT_DATASET = "quantkit-throughput"

TEMPLATE = """---
{{ card_data }}
---

# {{ model_name }}

{{ summary }}

## Quantization

| | |
|---|---|
{% for key, value in quant_rows %}| {{ key }} | {{ value }} |
{% endfor %}
Per-layer relative errors, the full recipe and timings are in `quantkit_manifest.json`.
{% if ppl_rows or throughput_rows %}
## Evaluation

Measured by `quantkit eval` on these exact weights (`quantkit_eval.json`, weights digest `{{ digest }}`).
{% endif %}{% if ppl_rows %}
### Perplexity

{{ ppl_caption }}

| model | perplexity | ± stderr |
|---|---|---|
{% for row in ppl_rows %}| {{ row | join(" | ") }} |
{% endfor %}{% for line in agreement %}
- {{ line }}{% endfor %}
{% endif %}{% if throughput_rows %}
### Throughput

On {{ device }}, tokens per second:

| batch | prefill | decode | base prefill | base decode |
|---|---|---|---|---|
{% for row in throughput_rows %}| {{ row | join(" | ") }} |
{% endfor %}{% endif %}{% if plot %}
![quantkit eval]({{ plot }})
{% endif %}
## How to use

### vLLM

```bash
vllm serve {{ repo_id }}
```

```python
from vllm import LLM

llm = LLM(model="{{ repo_id }}")
print(llm.generate("The capital of France is")[0].outputs[0].text)
```

### transformers

transformers loads GPTQ checkpoints through GPTQModel (`pip install gptqmodel`).

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{{ repo_id }}")
model = AutoModelForCausalLM.from_pretrained("{{ repo_id }}", device_map="auto")
inputs = tokenizer("The capital of France is", return_tensors="pt").to(model.device)
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=20)[0]))
```

### llama.cpp
{% if gguf_files %}{% for name in gguf_files %}
```bash
llama-cli --hf-repo {{ repo_id }} --hf-file {{ name }} -p "The capital of France is"
```
{% endfor %}{% else %}
This repository holds no GGUF file, and llama.cpp does not read GPTQ tensors: convert again with a recipe
whose `formats` lists `gguf` to get one.
{% endif %}"""


def _cell(value: Any) -> str:
    """A Markdown table cell: no pipes or newlines from the data."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _num(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "—" if value is None else _cell(value)
    return f"{value:,.{digits}f}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "text"


def _section(a: Artifact, name: str) -> dict | None:
    """An optional section of the eval JSON; a bare perplexity result (top-level "quantized") counts as one."""
    value = a.eval.get(name)
    if isinstance(value, dict):
        return value
    if name == "perplexity" and isinstance(a.eval.get("quantized"), dict):
        return a.eval
    return None


def _facts(a: Artifact) -> dict[str, Any]:
    q, m = a.quantization, a.manifest
    meta = q.get("meta") if isinstance(q.get("meta"), dict) else {}
    recipe = m.get("recipe") if isinstance(m.get("recipe"), dict) else {}
    source = m.get("source") if isinstance(m.get("source"), dict) else {}
    producer = f"{m['tool']} {m['version']}" if m.get("tool") and m.get("version") else meta.get("quantizer")
    if isinstance(producer, list):
        producer = ", ".join(str(p) for p in producer)
    base = source.get("model") or m.get("base_model")
    return {
        "bits": q["bits"],
        "group_size": q["group_size"],
        "sym": q["sym"],
        "desc_act": q["desc_act"],
        "checkpoint_format": q.get("checkpoint_format", "gptq"),
        "method": meta.get("method") or recipe.get("method") or "unknown",
        "recipe": recipe.get("name") or meta.get("recipe") or "unknown",
        "producer": producer or "quantkit",
        "base": base,
        "base_is_hub_id": isinstance(base, str) and bool(HUB_ID.match(base)) and not base.endswith(".gguf"),
    }


def _eval_results(a: Artifact, model_name: str) -> list[EvalResult]:
    results = []
    ppl = _section(a, "perplexity")
    if ppl and isinstance(ppl.get("quantized"), dict) and ppl["quantized"].get("ppl") is not None:
        text = str(ppl.get("text") or "text")
        args = {k: ppl[k] for k in ("ctx", "windows") if ppl.get(k) is not None}
        common = dict(task_type="text-generation", task_name="Text Generation", dataset_type=_slug(text),
                      dataset_name=text, dataset_args=args or None)
        config = f"ctx={ppl['ctx']}" if ppl.get("ctx") is not None else None
        stderr = ppl["quantized"].get("stderr")
        results.append(EvalResult(**common, metric_type="perplexity", metric_name="Perplexity",
                                  metric_value=round(float(ppl["quantized"]["ppl"]), 4), metric_config=config,
                                  metric_args={"stderr": round(float(stderr), 4)} if stderr is not None else None))
        if ppl.get("kl_divergence") is not None:
            results.append(EvalResult(**common, metric_type="kl_divergence", metric_name="KL divergence from the base model",
                                      metric_value=round(float(ppl["kl_divergence"]), 6), metric_config=config))
        if ppl.get("top1_agreement") is not None:
            results.append(EvalResult(**common, metric_type="top1_agreement", metric_name="Top-1 agreement with the base model",
                                      metric_value=round(float(ppl["top1_agreement"]), 6), metric_config=config))
    tp = _section(a, "throughput")
    for row in (tp or {}).get("rows") or []:
        device = str(tp.get("device") or "unknown device")
        for phase in ("prefill", "decode"):
            value = row.get(f"{phase}_tok_s")
            if value is None:
                continue
            results.append(EvalResult(
                task_type="text-generation", task_name="Text Generation", dataset_type=THROUGHPUT_DATASET,
                dataset_name=f"Throughput on {device}", metric_type="tokens_per_second",
                metric_name=f"{phase} tokens/s, batch {row.get('batch')}", metric_value=round(float(value), 2),
                metric_config=f"batch={row.get('batch')}", metric_args={"device": device, "phase": phase, "batch": row.get("batch")},
            ))
    return results


def _tables(a: Artifact) -> dict[str, Any]:
    out: dict[str, Any] = {"ppl_rows": [], "agreement": [], "throughput_rows": [], "ppl_caption": "", "device": ""}
    ppl = _section(a, "perplexity")
    if ppl:
        for label, key in (("this model", "quantized"), ("base model", "baseline")):
            part = ppl.get(key)
            if isinstance(part, dict) and part.get("ppl") is not None:
                out["ppl_rows"].append([label, _num(part["ppl"], 4), _num(part.get("stderr"), 4)])
        where = [f"text: {_cell(ppl['text'])}" if ppl.get("text") else None,
                 f"context {ppl['ctx']} tokens" if ppl.get("ctx") is not None else None,
                 f"{ppl['windows']} windows" if ppl.get("windows") is not None else None]
        out["ppl_caption"] = "; ".join(w for w in where if w) + "." if any(where) else ""
        if ppl.get("kl_divergence") is not None:
            out["agreement"].append(f"KL divergence from the base model: {_num(ppl['kl_divergence'], 6)}")
        if ppl.get("top1_agreement") is not None:
            out["agreement"].append(f"Top-1 agreement with the base model: {_num(100 * float(ppl['top1_agreement']), 2)}%")
    tp = _section(a, "throughput")
    if tp and tp.get("rows"):
        out["device"] = _cell(tp.get("device") or "an unrecorded device")
        for row in tp["rows"]:
            out["throughput_rows"].append([_cell(row.get("batch")), _num(row.get("prefill_tok_s"), 1), _num(row.get("decode_tok_s"), 1),
                                           _num(row.get("baseline_prefill_tok_s"), 1), _num(row.get("baseline_decode_tok_s"), 1)])
    return out


def render_card(artifact: Artifact, *, repo_id: str) -> ModelCard:
    """The model card for ``artifact`` published as ``repo_id``."""
    f = _facts(artifact)
    model_name = repo_id.split("/")[-1]
    tags = ["quantkit", "gptq", f"{f['bits']}-bit", f"w{f['bits']}a16"] + (["gguf"] if artifact.gguf_files else [])
    quantization = {k: f[k] for k in ("method", "bits", "group_size", "sym", "desc_act", "checkpoint_format", "recipe", "producer")}
    extra: dict[str, Any] = {"quantization": quantization, "quantized_by": f["producer"]}
    if f["base_is_hub_id"]:
        extra["base_model_relation"] = "quantized"
    eval_results = _eval_results(artifact, model_name)
    data = ModelCardData(
        base_model=f["base"] if f["base_is_hub_id"] else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        model_name=model_name if eval_results else None,
        eval_results=eval_results or None,
        **extra,
    )
    if f["base_is_hub_id"]:
        base = f"[{f['base']}](https://huggingface.co/{f['base']})"
    else:  # a local checkpoint: its name only, never the machine's path
        base = f"`{PurePath(str(f['base'])).name}` (a local checkpoint)" if f["base"] else "an unrecorded model"
    summary = (
        f"{base} quantized to {f['bits']}-bit weights with 16-bit activations (W{f['bits']}A16) by {f['producer']}: "
        f"{f['method']} method, group size {f['group_size']}, {'symmetric' if f['sym'] else 'asymmetric'}, "
        f"GPTQ `{f['checkpoint_format']}` checkpoint format."
    )
    quant_rows = [
        ("Base model", base), ("Method", f["method"]), ("Bits", f["bits"]), ("Group size", f["group_size"]),
        ("Symmetric", "yes" if f["sym"] else "no"), ("Act-order (desc_act)", "yes" if f["desc_act"] else "no"),
        ("Checkpoint format", f["checkpoint_format"]), ("Recipe", f["recipe"]), ("Quantized linears", artifact.quantized_layers),
        ("Produced by", f["producer"]),
    ]
    return ModelCard.from_template(
        data,
        template_str=TEMPLATE,
        model_name=model_name,
        repo_id=repo_id,
        summary=summary,
        quant_rows=[(k, _cell(v)) for k, v in quant_rows],
        digest=str(artifact.eval.get("weights_digest", ""))[:16],
        gguf_files=artifact.gguf_files,
        plot="quantkit_eval.png" if "quantkit_eval.png" in artifact.files else None,
        **_tables(artifact),
    )
