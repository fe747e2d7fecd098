# Frozen per-protein single/pair features: `offline` (deterministic, from sequence and start structure; a CPU job)
# or `openfold` (evoformer outputs of the real OpenFold model; a GPU job in its own environment). Two rules, so the
# slurm/ profile can send each to its partition by name.


rule featurize:
    input:
        pdb=raw_pdb,
    output:
        "data/features/{featurizer}/{name}.h5",
    log:
        "logs/featurize/{featurizer}/{name}.log",
    benchmark:
        "benchmarks/rules/featurize/{featurizer}/{name}.tsv"
    wildcard_constraints:
        featurizer="offline",
    conda:
        "../envs/starmd.yaml"
    params:
        cfg=features_json,
    shell:
        "python -m starmd featurize --featurizer {wildcards.featurizer} --name {wildcards.name} --pdb {input.pdb} "
        "--out {output} --config-json {params.cfg:q} > {log} 2>&1"


use rule featurize as featurize_openfold with:
    wildcard_constraints:
        featurizer="openfold",
    conda:
        "../envs/openfold.yaml"
