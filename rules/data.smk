# Raw MD in ATLAS shape ({name}.pdb + {name}_prod_R{1,2,3}_fit.xtc), the split lists, and SE(3) frames.


rule prepare_demo:
    """Offline demo dataset: short real OpenMM MD (amber14, implicit solvent) of small peptides, 3 replicas."""
    output:
        pdb="data/raw/demo/{name}/{name}.pdb",
        xtc=expand("data/raw/demo/{{name}}/{{name}}_prod_{replica}_fit.xtc", replica=["R1", "R2", "R3"]),
        provenance="data/raw/demo/{name}/provenance.json",
    log:
        "logs/prepare_demo/{name}.log",
    benchmark:
        "benchmarks/rules/prepare_demo/{name}.tsv"
    conda:
        "../envs/starmd.yaml"
    threads: 1
    params:
        cfg=section_json("demo"),
        out_dir="data/raw/demo/{name}",
    shell:
        "python -m starmd prepare-demo --name {wildcards.name} --out-dir {params.out_dir} --threads {threads} "
        "--config-json {params.cfg:q} > {log} 2>&1"


# Downloads run where Snakemake runs (the login node: compute nodes often have no internet), at most
# `--resources downloads=N` at once against the one ATLAS host (the slurm/ profile sets 4).
localrules:
    download_atlas,
    download_mdcath,


rule prepare_synthetic:
    """Known-answer dataset: exact normal-mode Langevin dynamics of an elastic network, 3 replicas + truth.json."""
    output:
        pdb="data/raw/synthetic/{name}/{name}.pdb",
        xtc=expand("data/raw/synthetic/{{name}}/{{name}}_prod_{replica}_fit.xtc", replica=["R1", "R2", "R3"]),
        truth="data/raw/synthetic/{name}/truth.json",
        provenance="data/raw/synthetic/{name}/provenance.json",
    log:
        "logs/prepare_synthetic/{name}.log",
    benchmark:
        "benchmarks/rules/prepare_synthetic/{name}.tsv"
    conda:
        "../envs/starmd.yaml"
    params:
        cfg=section_json("synthetic"),
        out_dir="data/raw/synthetic/{name}",
    shell:
        "python -m starmd prepare-synthetic --name {wildcards.name} --out-dir {params.out_dir} "
        "--config-json {params.cfg:q} > {log} 2>&1"


rule download_atlas:
    """One ATLAS chain: resumable, verified download and atomic extraction."""
    output:
        pdb="data/raw/atlas/{name}/{name}.pdb",
        xtc=expand("data/raw/atlas/{{name}}/{{name}}_prod_{replica}_fit.xtc", replica=["R1", "R2", "R3"]),
    log:
        "logs/download_atlas/{name}.log",
    retries: 2
    conda:
        "../envs/starmd.yaml"
    resources:
        downloads=1,
    params:
        cfg=section_json("atlas"),
        out_dir="data/raw/atlas/{name}",
    shell:
        "python -m starmd download-atlas --name {wildcards.name} --out-dir {params.out_dir} "
        "--config-json {params.cfg:q} > {log} 2>&1"


rule make_splits:
    """data/splits/{train,val,test}.txt: the shipped AlphaFlow/MDGen lists (ATLAS) or the demo assignment."""
    output:
        expand("data/splits/{split}.txt", split=["train", "val", "test"]),
    log:
        "logs/make_splits.log",
    conda:
        "../envs/starmd.yaml"
    params:
        cfg=section_json("splits"),
        dataset=DATASET,
        dataset_arg=dataset_json_arg,
    shell:
        "python -m starmd make-splits --dataset {params.dataset} --out-dir data/splits "
        "--config-json {params.cfg:q} {params.dataset_arg} > {log} 2>&1"


rule extract_frames:
    """Per-residue SE(3) frames (N, CA, C -> rotation, CA translation) for every replica, in HDF5."""
    input:
        pdb=raw_pdb,
        xtc=raw_xtcs,
    output:
        "data/frames/{name}.h5",
    log:
        "logs/extract_frames/{name}.log",
    benchmark:
        "benchmarks/rules/extract_frames/{name}.tsv"
    conda:
        "../envs/starmd.yaml"
    params:
        cfg=section_json("frames"),
    shell:
        "python -m starmd extract-frames --name {wildcards.name} --pdb {input.pdb} --xtc {input.xtc} "
        "--out {output} --config-json {params.cfg:q} > {log} 2>&1"


rule prepare_local_start:
    """Your own MD: the start structure (frame 0 of the first trajectory; protein only, made whole) + provenance."""
    input:
        local_start_inputs,
    output:
        pdb="data/raw/local/{name}/{name}.pdb",
        provenance="data/raw/local/{name}/provenance.json",
    log:
        "logs/prepare_local/{name}_start.log",
    conda:
        "../envs/starmd.yaml"
    params:
        cfg=local_entry_json,
        out_dir="data/raw/local/{name}",
    shell:
        "python -m starmd prepare-local start --name {wildcards.name} --out {params.out_dir} "
        "--config-json {params.cfg:q} > {log} 2>&1"


rule prepare_local_replica:
    """Your own MD: trajectory k of the manifest entry as replica R{k} (protein only, made whole, CA-fitted)."""
    input:
        start="data/raw/local/{name}/{name}.pdb",
        trajectory=local_trajectory,
    output:
        "data/raw/local/{name}/{name}_prod_R{k}_fit.xtc",
    log:
        "logs/prepare_local/{name}_R{k}.log",
    wildcard_constraints:
        k=r"[0-9]+",
    conda:
        "../envs/starmd.yaml"
    params:
        cfg=local_entry_json,
    shell:
        "python -m starmd prepare-local replica --name {wildcards.name} --index {wildcards.k} --start {input.start} "
        "--out {output} --config-json {params.cfg:q} > {log} 2>&1"


rule download_mdcath:
    """One mdCATH domain file: resumable, size-verified download, checked to open as HDF5 holding the domain."""
    output:
        "data/raw/mdcath/h5/mdcath_dataset_{domain}.h5",
    log:
        "logs/download_mdcath/{domain}.log",
    wildcard_constraints:
        domain=r"[A-Za-z0-9]+",
    retries: 2
    conda:
        "../envs/starmd.yaml"
    resources:
        downloads=1,
    params:
        cfg=mdcath_json("download"),
        h5_dir=output_dir,
    shell:
        "python -m starmd prepare-mdcath download --domain {wildcards.domain} --h5-dir {params.h5_dir} "
        "--config-json {params.cfg:q} > {log} 2>&1"


rule prepare_mdcath:
    """One mdCATH domain at one temperature as protein {domain}_{temperature}: start structure + CA-fitted replicas."""
    input:
        "data/raw/mdcath/h5/mdcath_dataset_{domain}.h5",
    output:
        pdb="data/raw/mdcath/{domain}_{temperature}/{domain}_{temperature}.pdb",
        xtc=expand(
            "data/raw/mdcath/{{domain}}_{{temperature}}/{{domain}}_{{temperature}}_prod_{replica}_fit.xtc",
            replica=MDCATH_REPLICAS,
        ),
        provenance="data/raw/mdcath/{domain}_{temperature}/provenance.json",
    log:
        "logs/prepare_mdcath/{domain}_{temperature}.log",
    benchmark:
        "benchmarks/rules/prepare_mdcath/{domain}_{temperature}.tsv"
    wildcard_constraints:
        domain=r"[A-Za-z0-9]+",
        temperature=r"[0-9]+",
    conda:
        "../envs/starmd.yaml"
    params:
        cfg=mdcath_json("convert"),
        h5_dir=input_dir,
        out_root=raw_root,
    shell:
        "python -m starmd prepare-mdcath convert --domain {wildcards.domain} --temperature {wildcards.temperature} "
        "--h5-dir {params.h5_dir} --out-root {params.out_root} --config-json {params.cfg:q} > {log} 2>&1"
