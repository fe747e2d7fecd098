# Distributed block-causal training: one job running torchrun over its GPUs (one CPU process on a laptop).
# Rerunning the rule resumes from runs/{run}/checkpoints/last.pt (not an output: Snakemake would delete it); when the
# rerun is due to changed params or inputs, that last.pt is another experiment's, and --restart-if-changed moves it
# aside (runs/{run}/checkpoints.superseded-<UTC time>/) instead of failing.


rule train:
    input:
        frames=split_files("frames", "train"),
        features=split_files("features", "train"),
        val_frames=split_files("frames", "val"),
        val_features=split_files("features", "val"),
    output:
        ckpt=f"runs/{RUN}/checkpoints/final.pt",
        metrics=f"runs/{RUN}/metrics.jsonl",
    log:
        f"logs/{RUN}/train.log",
    benchmark:
        f"benchmarks/rules/{RUN}/train.tsv"
    conda:
        "../envs/starmd.yaml"
    threads: 2
    resources:
        gpu=1,
    params:
        cfg=section_json("training", "model", "diffusion"),
        run_dir=run_dir,
    shell:
        # --nproc-per-node follows the GPUs the job got (at least one process on a CPU-only machine).
        "nproc=$(( {resources.gpu} > 1 ? {resources.gpu} : 1 )); "
        "torchrun --standalone --nproc-per-node $nproc -m starmd train "
        "--frames {input.frames} --features {input.features} "
        "--val-frames {input.val_frames} --val-features {input.val_features} "
        "--run-dir {params.run_dir} --config-json {params.cfg:q} --restart-if-changed >> {log} 2>&1"
