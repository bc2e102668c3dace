"""The validator: perplexity (with KL divergence and top-1 agreement) and throughput of a quantized checkpoint beside
its baseline, through the reference, kernel or llama.cpp backend; JSON, Markdown and PNG reports.

    ppl.py            perplexity windows, scores, KL / top-1 agreement against a baseline
    backends.py       reference / kernel / llama.cpp
    throughput.py     prefill and decode tokens/s with a static KV cache and CUDA graphs
    random_weights.py a random model of a real config, quantized on the device, for speed runs
    report.py         the JSON, Markdown report and PNG plot; render.py the terminal tables
    validate.py       orchestration (what `quantkit eval` calls)
"""
