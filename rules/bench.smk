# Benchmarks (issue 9): KV-cache memory, training throughput, rollout speed vs OpenMM, sampling steps vs quality.
# Each rule runs one script of benchmarks/ and writes benchmarks/results/<name>.json (machine description, exact
# command, settings, numbers) and <name>.png. Settings: config section `benchmarks` (schemas/benchmarks.schema.yaml);
# each rule passes the shared keys plus its own sub-section, so changing one benchmark's settings reruns only it.
# Each job claims every core (threads: workflow.cores) so no other job runs beside a timing; the scripts themselves
# use benchmarks.threads. Self-contained: it relies on config keys and the bench_* helpers below only.

import json

from starmd.bench.config import section_for


def bench_settings():
    return config.get("benchmarks", {})


def bench_section_json(name):
    """Shared benchmark keys + the `name` sub-section, as JSON (the script fills schema defaults for the rest)."""
    return json.dumps(section_for(bench_settings(), name), sort_keys=True)


def bench_demo_json():
    return json.dumps(config.get("demo", {}), sort_keys=True)


def bench_quality_protein():
    """benchmarks.sampling_steps.protein, else the first demo protein with split: test."""
    name = bench_settings().get("sampling_steps", {}).get("protein")
    if name:
        return name
    tests = [p["name"] for p in config.get("demo", {}).get("proteins", []) if p.get("split") == "test"]
    if not tests:
        raise ValueError("bench_sampling_steps: set benchmarks.sampling_steps.protein or give a demo.proteins "
                         "entry with split: test")
    return tests[0]


def bench_quality_inputs(wildcards):
    """Evaluated only when bench_sampling_steps is in the DAG, so a config without a test protein still parses."""
    name = bench_quality_protein()
    return {
        "checkpoint": f"runs/{config['run']}/checkpoints/final.pt",
        "features": f"data/features/{config['features']['featurizer']}/{name}.h5",
        "frames": f"data/frames/{name}.h5",
    }


# The script and the schema (whose defaults fill every key the config leaves out) are inputs, so editing either
# reruns the benchmark.
BENCH_SCHEMA = "schemas/benchmarks.schema.yaml"
BENCH_NAMES = ["kv_cache_memory", "training_throughput", "rollout_speed", "sampling_steps"]


def bench_targets():
    return expand("benchmarks/results/{bench}.{ext}", bench=BENCH_NAMES, ext=["json", "png"])


rule bench_kv_cache:
    """Singles KV cache (measured on a real paper-scale model) vs per-frame pair cache (allocated up to a budget,
    formula beyond) over N and L; exponents; N=500/L=400 ratio; peak process memory of real rollouts vs L."""
    input:
        script="benchmarks/kv_cache.py",
        schema=BENCH_SCHEMA,
    output:
        json="benchmarks/results/kv_cache_memory.json",
        png="benchmarks/results/kv_cache_memory.png",
    log:
        "logs/bench/kv_cache_memory.log",
    params:
        settings=bench_section_json("kv_cache"),
    threads: workflow.cores
    shell:
        "python {input.script} --config-json {params.settings:q} --out-json {output.json} "
        "--out-png {output.png} > {log} 2>&1"


rule bench_training:
    """Tokens/s and frames/s of block-causal training steps, demo vs paper scale; peak memory vs L."""
    input:
        script="benchmarks/training.py",
        schema=BENCH_SCHEMA,
    output:
        json="benchmarks/results/training_throughput.json",
        png="benchmarks/results/training_throughput.png",
    log:
        "logs/bench/training_throughput.log",
    params:
        settings=bench_section_json("training"),
    threads: workflow.cores
    shell:
        "python {input.script} --config-json {params.settings:q} --out-json {output.json} "
        "--out-png {output.png} > {log} 2>&1"


rule bench_rollout_speed:
    """Simulated ns/day of starmd rollout (demo and paper scale, several step counts) vs OpenMM on each demo protein,
    same threads, one run; per-frame time vs context length with and without the KV cache."""
    input:
        script="benchmarks/rollout_speed.py",
        schema=BENCH_SCHEMA,
    output:
        json="benchmarks/results/rollout_speed.json",
        png="benchmarks/results/rollout_speed.png",
    log:
        "logs/bench/rollout_speed.log",
    params:
        settings=bench_section_json("rollout_speed"),
        demo=bench_demo_json(),
    threads: workflow.cores
    shell:
        "python {input.script} --config-json {params.settings:q} --demo-json {params.demo:q} "
        "--out-json {output.json} --out-png {output.png} > {log} 2>&1"


rule bench_sampling_steps:
    """Reverse-step count vs CA validity, JSD and wall time on the trained checkpoint; recommends a step count."""
    input:
        unpack(bench_quality_inputs),
        script="benchmarks/sampling_steps.py",
        schema=BENCH_SCHEMA,
    output:
        json="benchmarks/results/sampling_steps.json",
        png="benchmarks/results/sampling_steps.png",
    log:
        "logs/bench/sampling_steps.log",
    params:
        settings=bench_section_json("sampling_steps"),
    threads: workflow.cores
    shell:
        "python {input.script} --config-json {params.settings:q} --checkpoint {input.checkpoint} "
        "--features {input.features} --frames {input.frames} --out-json {output.json} --out-png {output.png} "
        "> {log} 2>&1"


rule bench:
    """All benchmarks (JSON + plot each)."""
    input:
        bench_targets(),
