# Benchmarks (issue 9): KV-cache memory, training throughput, rollout speed vs OpenMM, sampling steps vs quality.
# Each rule runs one script of benchmarks/ and writes benchmarks/results/<name>.json (machine description, exact
# command, settings, numbers) and <name>.png. Settings: config section `benchmarks` (schemas/benchmarks.schema.yaml);
# each rule passes the shared keys plus its own sub-section, so changing one benchmark's settings reruns only it.
# Locally each job claims every core (bench_threads) so no other job runs beside a timing; the scripts themselves
# use benchmarks.threads.


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
    conda:
        "../envs/starmd.yaml"
    threads: bench_threads()
    params:
        settings=bench_section_json("kv_cache"),
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
    conda:
        "../envs/starmd.yaml"
    threads: bench_threads()
    params:
        settings=bench_section_json("training"),
    shell:
        "python {input.script} --config-json {params.settings:q} --out-json {output.json} "
        "--out-png {output.png} > {log} 2>&1"


rule bench_attention:
    """Block-causal training attention with the dense token mask vs mask-free (frame by frame): time and peak
    memory of forward + backward, side by side in one process."""
    input:
        script="benchmarks/attention.py",
        schema=BENCH_SCHEMA,
    output:
        json="benchmarks/results/training_attention.json",
        png="benchmarks/results/training_attention.png",
    log:
        "logs/bench/training_attention.log",
    conda:
        "../envs/starmd.yaml"
    threads: bench_threads()
    params:
        settings=bench_section_json("attention"),
    shell:
        "python {input.script} --config-json {params.settings:q} --out-json {output.json} "
        "--out-png {output.png} > {log} 2>&1"


rule bench_memory:
    """Saved training activations vs N, L, batch with and without activation checkpointing; fitted model and its
    extrapolation to the paper setup (docs/memory.md)."""
    input:
        script="benchmarks/memory.py",
        schema=BENCH_SCHEMA,
    output:
        json="benchmarks/results/training_memory.json",
        png="benchmarks/results/training_memory.png",
    log:
        "logs/bench/training_memory.log",
    conda:
        "../envs/starmd.yaml"
    threads: bench_threads()
    params:
        settings=bench_section_json("memory"),
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
    conda:
        "../envs/starmd.yaml"
    threads: bench_threads()
    params:
        settings=bench_section_json("rollout_speed"),
        demo=bench_demo_json(),
    shell:
        "python {input.script} --config-json {params.settings:q} --demo-json {params.demo:q} "
        "--out-json {output.json} --out-png {output.png} > {log} 2>&1"


rule bench_inference_path:
    """One denoising evaluation of the paper-scale model, fast inference path (no mask, shared static pair) vs the
    previous path, side by side in one run; static-feature bytes of both."""
    input:
        script="benchmarks/inference_path.py",
        schema=BENCH_SCHEMA,
    output:
        json="benchmarks/results/inference_path.json",
        png="benchmarks/results/inference_path.png",
    log:
        "logs/bench/inference_path.log",
    conda:
        "../envs/starmd.yaml"
    threads: bench_threads()
    params:
        settings=bench_section_json("inference_path"),
    shell:
        "python {input.script} --config-json {params.settings:q} --out-json {output.json} "
        "--out-png {output.png} > {log} 2>&1"


rule bench_estimate_calibration:
    """Measured activation bytes and seconds of paper-scale rollout evaluations and training steps at a few sizes,
    and the fitted constants `python -m starmd estimate` uses (CPU; GPU rollout time from the H200 reference)."""
    input:
        script="benchmarks/estimate_calibration.py",
        schema=BENCH_SCHEMA,
        gpu_reference="benchmarks/reference/gpu_h200.json",
    output:
        json="benchmarks/results/estimate_calibration.json",
        png="benchmarks/results/estimate_calibration.png",
    log:
        "logs/bench/estimate_calibration.log",
    conda:
        "../envs/starmd.yaml"
    threads: bench_threads()
    params:
        settings=bench_section_json("estimate_calibration"),
    shell:
        "python {input.script} --config-json {params.settings:q} --gpu-reference {input.gpu_reference} "
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
    conda:
        "../envs/starmd.yaml"
    threads: bench_threads()
    params:
        settings=bench_section_json("sampling_steps"),
    shell:
        "python {input.script} --config-json {params.settings:q} --checkpoint {input.checkpoint} "
        "--features {input.features} --frames {input.frames} --out-json {output.json} --out-png {output.png} "
        "> {log} 2>&1"


rule bench:
    """All benchmarks (JSON + plot each)."""
    input:
        bench_targets(),
