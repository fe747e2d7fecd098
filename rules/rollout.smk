# Autoregressive rollout of the test proteins from the trained checkpoint (singles-only KV cache, contextual
# noise), and the contextual-noise ablation: the same proteins over a long horizon at several inference tau.
# Frames stream into runs/{run}/rollouts/.{name}.h5.partial/ (not an output: Snakemake would delete it); a rerun after
# SIGTERM (exit 75), a time limit or a kill continues from there. When the rerun is due to changed params or inputs,
# that partial belongs to another experiment and --restart-if-changed discards it instead of failing. The log is
# appended to (>>), so it keeps every attempt.


rule rollout:
    input:
        ckpt=f"runs/{RUN}/checkpoints/final.pt",
        features=f"data/features/{FEATURIZER}/{{name}}.h5",
        frames="data/frames/{name}.h5",
    output:
        h5=f"runs/{RUN}/rollouts/{{name}}.h5",
        pdb=f"runs/{RUN}/rollouts/{{name}}.pdb",
        xtc=rollout_xtcs(f"runs/{RUN}/rollouts", config["rollout"]["n_samples"]),
    log:
        f"logs/{RUN}/rollout/{{name}}.log",
    benchmark:
        f"benchmarks/rules/{RUN}/rollout/{{name}}.tsv"
    conda:
        "../envs/starmd.yaml"
    resources:
        gpu=1,
    params:
        cfg=section_json("rollout"),
    shell:
        "python -m starmd rollout --checkpoint {input.ckpt} --features {input.features} --frames {input.frames} "
        "--out {output.h5} --config-json {params.cfg:q} --restart-if-changed >> {log} 2>&1"


use rule rollout as rollout_ablation with:
    output:
        h5=f"runs/{RUN}/ablation/tau{{tau}}/rollouts/{{name}}.h5",
        pdb=f"runs/{RUN}/ablation/tau{{tau}}/rollouts/{{name}}.pdb",
        xtc=rollout_xtcs(f"runs/{RUN}/ablation/tau{{tau}}/rollouts", config["ablation"]["n_samples"]),
    log:
        f"logs/{RUN}/ablation/tau{{tau}}/rollout/{{name}}.log",
    benchmark:
        f"benchmarks/rules/{RUN}/ablation/tau{{tau}}/rollout/{{name}}.tsv"
    params:
        cfg=ablation_rollout_json,


rule generate:
    """Rollouts of a structure alone (structures/{stem}.pdb or .cif; no MD): features, rollout, reference-free report."""
    input:
        ckpt=f"runs/{RUN}/checkpoints/final.pt",
        structure=structure_file,
    output:
        h5=f"runs/{RUN}/generated/{{stem}}.h5",
        report=f"runs/{RUN}/generated/{{stem}}_report.json",
    log:
        f"logs/{RUN}/generate/{{stem}}.log",
    conda:
        "../envs/starmd.yaml"
    resources:
        gpu=1,
    params:
        rollout=section_json("rollout"),
        features=section_json("features"),
        out_dir=output_dir,
    shell:
        "python -m starmd generate --checkpoint {input.ckpt} --structure {input.structure} --out-dir {params.out_dir} "
        "--rollout-json {params.rollout:q} --features-json {params.features:q} > {log} 2>&1"
