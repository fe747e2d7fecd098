# Metrics per protein against the held-out MD replicas (model, oracle replica, trivial baselines), then every figure
# and the HTML report from the saved metrics only.


rule evaluate:
    input:
        rollout=f"runs/{RUN}/rollouts/{{name}}.h5",
        pdb=f"runs/{RUN}/rollouts/{{name}}.pdb",
        xtc=rollout_xtcs(f"runs/{RUN}/rollouts", config["rollout"]["n_samples"]),
        frames="data/frames/{name}.h5",
        raw_pdb=raw_pdb,
        raw_xtc=raw_xtcs,
        truth=truth_files,
    output:
        f"runs/{RUN}/eval/{{name}}.json",
    log:
        f"logs/{RUN}/evaluate/{{name}}.log",
    conda:
        "../envs/starmd.yaml"
    params:
        cfg=section_json("evaluation"),
        raw_dir=raw_dir,
    shell:
        "python -m starmd evaluate --name {wildcards.name} --rollout {input.rollout} --frames {input.frames} "
        "--raw-dir {params.raw_dir} --out {output} --config-json {params.cfg:q} > {log} 2>&1"


use rule evaluate as evaluate_ablation with:
    input:
        rollout=f"runs/{RUN}/ablation/tau{{tau}}/rollouts/{{name}}.h5",
        pdb=f"runs/{RUN}/ablation/tau{{tau}}/rollouts/{{name}}.pdb",
        xtc=rollout_xtcs(f"runs/{RUN}/ablation/tau{{tau}}/rollouts", config["ablation"]["n_samples"]),
        frames="data/frames/{name}.h5",
        raw_pdb=raw_pdb,
        raw_xtc=raw_xtcs,
        truth=truth_files,
    output:
        f"runs/{RUN}/ablation/tau{{tau}}/eval/{{name}}.json",
    log:
        f"logs/{RUN}/ablation/tau{{tau}}/evaluate/{{name}}.log",


rule figures:
    """Metrics table, stability (with the tau ablation), RMSF, PCA densities, training curves, KV-cache memory, and
    a self-contained report.html, all from saved JSON."""
    input:
        evals=expand(f"runs/{RUN}/eval/{{name}}.json", name=TEST_PROTEINS),
        ablation=ablation_evals(),
        metrics=f"runs/{RUN}/metrics.jsonl",
        kv_bench="benchmarks/results/kv_cache_memory.json",
    output:
        report(f"runs/{RUN}/figures/report.html", caption="../report/report_html.rst", category="Report"),
        report(f"runs/{RUN}/figures/metrics_table.md", caption="../report/metrics_table.rst", category="Metrics"),
        report(
            expand(f"runs/{RUN}/figures/{{fig}}.png", fig=FIGURES),
            caption="../report/figures.rst",
            category="Figures",
        ),
        expand(f"runs/{RUN}/figures/{{fig}}.pdf", fig=FIGURES),
        f"runs/{RUN}/figures/metrics_table.csv",
    log:
        f"logs/{RUN}/figures.log",
    conda:
        "../envs/starmd.yaml"
    params:
        cfg=section_json("evaluation"),
        ablation=ablation_args(),
        out_dir=output_dir,
    shell:
        "python -m starmd figures --eval {input.evals} --metrics {input.metrics} {params.ablation} "
        "--kv-bench {input.kv_bench} --out-dir {params.out_dir} --config-json {params.cfg:q} > {log} 2>&1"
