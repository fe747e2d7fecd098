# Frozen per-protein single/pair features: `offline` (deterministic, from sequence and start structure) or
# `openfold` (evoformer outputs of the real OpenFold model).


rule featurize:
    input:
        pdb=raw_pdb,
    output:
        "data/features/{featurizer}/{name}.h5",
    conda:
        featurize_env
    log:
        "logs/featurize/{featurizer}/{name}.log",
    benchmark:
        "benchmarks/rules/featurize/{featurizer}/{name}.tsv"
    params:
        cfg=features_json,
    shell:
        "python -m starmd featurize --featurizer {wildcards.featurizer} --name {wildcards.name} --pdb {input.pdb} "
        "--out {output} --config-json {params.cfg:q} > {log} 2>&1"
