# Config validation, protein lists and every input/param helper the rules use (one place, named helpers, no
# lambdas in rules).

import json
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

from starmd.bench.config import load_settings, section_for
from starmd.config import apply_base_seed, validate_config
from starmd.data.local import find_entry, load_entries
from starmd.data.mdcath import MdcathConfig, part_section
from starmd.delta_t import check_rollout_delta_t

# The MD replicas every dataset provides (prepare_demo writes them, ATLAS ships them).
REPLICAS = ["R1", "R2", "R3"]


def check_config():
    """Every config problem knowable before a job starts, as a ValueError of one line naming the key: the schema
    (strict integers: 20.0 is not one), the replicas evaluation compares, the ablation horizon, a rollout Delta-t
    outside the trained ones (starmd.delta_t). Fills in the
    schema's defaults (snakemake.utils.validate), which the rules see."""
    validate_config(config, Path(workflow.basedir) / "schemas" / "config.schema.yaml")
    validate(config, "../schemas/config.schema.yaml")  # passes (checked above, more strictly); fills the defaults
    evaluation = config["evaluation"]
    for key in ("reference_replica", "oracle_replica"):
        if evaluation.get(key, REPLICAS[0]) not in REPLICAS:
            raise ValueError(
                f"config evaluation.{key}: {evaluation[key]!r} is not a replica of the dataset "
                f"(allowed: one of {', '.join(REPLICAS)})"
            )
    if "reference_replica" in evaluation and evaluation["reference_replica"] == evaluation.get("oracle_replica"):
        raise ValueError(
            "config evaluation.oracle_replica: must differ from evaluation.reference_replica "
            f"(allowed: another of {', '.join(REPLICAS)})"
        )
    dataset = config["dataset"]
    seeds = config.get(dataset, {}).get("replica_seeds")  # the demo and synthetic datasets make their replicas
    if seeds is not None and len(seeds) != len(REPLICAS):
        raise ValueError(
            f"config {dataset}.replica_seeds: {len(seeds)} seeds, but the workflow reads {len(REPLICAS)} "
            f"replicas (allowed: exactly {len(REPLICAS)} distinct seeds)"
        )
    window, horizon = config["training"]["num_frames"], config["ablation"]["n_frames"]
    if horizon < 10 * window:
        raise ValueError(
            f"config ablation.n_frames: {horizon} is shorter than 10 x training.num_frames "
            f"(allowed: >= {10 * window}; the ablation is about long horizons)"
        )
    check_rollout_delta_t(config)


try:
    check_config()
except ValueError as exc:
    sys.exit(str(exc))  # one line on stderr, exit status 1: no traceback, no schema dump
apply_base_seed(config)

DATASET = config["dataset"]
RUN = config["run"]
RAW = f"data/raw/{DATASET}"
FEATURIZER = config["features"]["featurizer"]


def section_json(*names):
    """JSON of the named config sections: the only settings a step sees, and its params rerun trigger."""
    if len(names) == 1:
        return json.dumps(config[names[0]], sort_keys=True)
    return json.dumps({n: config[n] for n in names}, sort_keys=True)


wildcard_constraints:
    name=r"[A-Za-z0-9]+_[A-Za-z0-9]+",
    replica="|".join(REPLICAS),
    tau=r"[0-9.e-]+",


# --- proteins ---------------------------------------------------------------------------------------------------
def _protein_splits():
    """{split: [names]} exactly as make_splits writes them (same library call, so the DAG and the files agree)."""
    from starmd.data.splits import SplitsConfig, make_splits

    try:
        return make_splits(
            DATASET,
            SplitsConfig.from_dict(config["splits"]),
            demo_section=config["demo"],
            synthetic_section=config["synthetic"],
            local_section=config["local"] if DATASET == "local" else None,
            mdcath_section=config["mdcath"],
        )
    except ValueError as exc:  # e.g. an empty split, or mdcath.domains left empty
        sys.exit(f"config {exc}")


def _local_entries():
    """The `local` manifest, checked (names, files, splits, dt_ps) before any job starts; [] for other datasets."""
    if DATASET != "local":
        return []
    try:
        return load_entries(config["local"])
    except ValueError as exc:
        sys.exit(f"config {exc}")


LOCAL_ENTRIES = _local_entries()
SPLITS = _protein_splits()
PROTEINS = sorted({n for names in SPLITS.values() for n in names})
TEST_PROTEINS = SPLITS["test"]


# mdCATH replicas chosen in the config, in order, become R1, R2, ... of every {domain}_{T} protein.
MDCATH_REPLICAS = [f"R{k}" for k in range(1, len(MdcathConfig.from_dict(config["mdcath"]).replicas) + 1)]


# --- raw MD (identical layout for every dataset) ----------------------------------------------------------------
def raw_pdb(wildcards):
    return f"{RAW}/{wildcards.name}/{wildcards.name}.pdb"


def replicas_of(name):
    """R1, R2, ...: one per trajectory of a local protein's manifest entry, one per chosen mdCATH replica; the
    workflow's REPLICAS otherwise."""
    if DATASET == "local":
        return [f"R{k}" for k in range(1, len(find_entry(LOCAL_ENTRIES, name).trajectories) + 1)]
    if DATASET == "mdcath":
        return MDCATH_REPLICAS
    return REPLICAS


def raw_xtcs(wildcards):
    return [f"{RAW}/{wildcards.name}/{wildcards.name}_prod_{r}_fit.xtc" for r in replicas_of(wildcards.name)]


def local_start_inputs(wildcards):
    """The topology and first trajectory of a local protein (so editing either reruns its conversion)."""
    entry = find_entry(LOCAL_ENTRIES, wildcards.name)
    return [str(entry.topology), str(entry.trajectories[0])]


def local_entry_json(wildcards):
    """Only this protein's manifest entry (paths resolved): the prepare_local params, so adding or editing another
    protein reruns nothing of this one."""
    return json.dumps(find_entry(LOCAL_ENTRIES, wildcards.name).as_section(), sort_keys=True)


def mdcath_json(part):
    """JSON of only the `mdcath` keys `prepare-mdcath {part}` reads (not the domain list, not the temperatures): the
    params of its jobs, so listing another domain re-downloads and re-converts none already done."""
    return json.dumps(part_section(config["mdcath"], part), sort_keys=True)


def local_trajectory(wildcards):
    entry = find_entry(LOCAL_ENTRIES, wildcards.name)
    k = int(wildcards.k)
    if not 1 <= k <= len(entry.trajectories):
        raise ValueError(f"{entry.where}: has {len(entry.trajectories)} trajectories, no replica R{k}")
    return str(entry.trajectories[k - 1])


for _name in TEST_PROTEINS:  # evaluation compares against these replicas of every test protein
    for _role in ("reference_replica", "oracle_replica"):
        if config["evaluation"].get(_role, REPLICAS[0]) not in replicas_of(_name):
            sys.exit(
                f"config local: test protein {_name} has replicas {replicas_of(_name)}, but evaluation.{_role} is "
                f"{config['evaluation'][_role]} (give it more trajectories, or make it a train protein)"
            )


def truth_files(wildcards):
    """The synthetic system's exact statistics (evaluate scores against them when present)."""
    return [f"{RAW}/{wildcards.name}/truth.json"] if DATASET == "synthetic" else []


def features_json(wildcards):
    """Only the chosen featurizer's settings, so tuning one featurizer never reruns the other."""
    f = wildcards.featurizer
    return json.dumps({"featurizer": f, f: config["features"].get(f, {})}, sort_keys=True)


def dataset_json_arg(wildcards):
    """make-splits needs the dataset's config section for its protein list (nothing for ATLAS: shipped lists)."""
    if DATASET in ("demo", "synthetic", "local", "mdcath"):
        return f"--{DATASET}-json {shlex.quote(section_json(DATASET))}"
    return ""


def raw_dir(wildcards):
    return f"{RAW}/{wildcards.name}"


def run_dir(wildcards, output):
    """runs/{run} from the train rule's checkpoint output (runs/{run}/checkpoints/final.pt)."""
    return str(Path(output.ckpt).parents[1])


def output_dir(wildcards, output):
    return str(Path(output[0]).parent)


def input_dir(wildcards, input):
    return str(Path(input[0]).parent)


def raw_root(wildcards, output):
    """data/raw/{dataset}, from a rule's `pdb` output data/raw/{dataset}/{name}/{name}.pdb."""
    return str(Path(output.pdb).parents[1])


def split_files(kind, split):
    """Frames or features HDF5 of every protein in a split (the training inputs)."""
    pattern = "data/frames/{name}.h5" if kind == "frames" else f"data/features/{FEATURIZER}/{{name}}.h5"
    return expand(pattern, name=SPLITS[split])


# --- rollout, ablation and figures ------------------------------------------------------------------------------
def rollout_xtcs(folder, n_samples):
    """One XTC per sampled trajectory beside the rollout HDF5 ({name} stays a wildcard)."""
    return [f"{folder}/{{name}}_s{k}.xtc" for k in range(n_samples)]


def structure_file(wildcards):
    """structures/{stem}.pdb, else structures/{stem}.cif: the input of `generate` (a structure, no MD)."""
    for ext in ("pdb", "cif"):
        if Path(f"structures/{wildcards.stem}.{ext}").exists():
            return f"structures/{wildcards.stem}.{ext}"
    return f"structures/{wildcards.stem}.pdb"  # missing: Snakemake names it


ABLATION_TAUS = [f"{t:g}" for t in config["ablation"]["taus"]]


def ablation_rollout_json(wildcards):
    """The rollout section with this ablation point's tau, horizon and sample count."""
    cfg = dict(
        config["rollout"],
        tau=float(wildcards.tau),
        n_frames=config["ablation"]["n_frames"],
        n_samples=config["ablation"]["n_samples"],
    )
    return json.dumps(cfg, sort_keys=True)


def ablation_evals():
    return expand(f"runs/{RUN}/ablation/tau{{tau}}/eval/{{name}}.json", tau=ABLATION_TAUS, name=TEST_PROTEINS)


def ablation_args():
    """`--ablation 'tau=0.05' a.json b.json ...` once per tau, for the stability figure."""
    args = []
    for tau in ABLATION_TAUS:
        args += ["--ablation", shlex.quote(f"tau={tau}")]
        args += [f"runs/{RUN}/ablation/tau{tau}/eval/{n}.json" for n in TEST_PROTEINS]
    return " ".join(args)


FIGURES = ["metrics_table", "stability", "rmsf", "pca_density", "autocorrelation", "training", "kv_cache_memory"]
if DATASET == "synthetic":
    FIGURES.append("truth_acf")  # the known-answer system is also scored against its exact statistics


# --- benchmarks -------------------------------------------------------------------------------------------------
def bench_settings():
    return config["benchmarks"]


def bench_threads():
    """Every core of a local run (--cores), so no other job runs beside a timing. Where no total core count exists
    (a cluster executor, --report) the job gets its own allocation: benchmarks.threads, the threads the scripts use."""
    return workflow.resource_settings.cores or load_settings(json.dumps(bench_settings()), BENCH_SCHEMA)["threads"]


def bench_section_json(name):
    """Shared benchmark keys + the `name` sub-section, as JSON (the script fills schema defaults for the rest)."""
    return json.dumps(section_for(bench_settings(), name), sort_keys=True)


def bench_demo_json():
    return json.dumps(config["demo"], sort_keys=True)


def bench_quality_protein():
    """benchmarks.sampling_steps.protein, else the first test protein of the dataset."""
    name = bench_settings().get("sampling_steps", {}).get("protein")
    if name:
        return name
    if not TEST_PROTEINS:
        raise ValueError("bench_sampling_steps: set benchmarks.sampling_steps.protein (the test split is empty)")
    return TEST_PROTEINS[0]


def bench_quality_inputs(wildcards):
    """Evaluated only when bench_sampling_steps is in the DAG, so a config without a test protein still parses."""
    name = bench_quality_protein()
    return {
        "checkpoint": f"runs/{RUN}/checkpoints/final.pt",
        "features": f"data/features/{FEATURIZER}/{name}.h5",
        "frames": f"data/frames/{name}.h5",
    }


# The script and the schema (whose defaults fill every key the config leaves out) are inputs, so editing either
# reruns the benchmark.
BENCH_SCHEMA = "schemas/benchmarks.schema.yaml"
BENCH_NAMES = [
    "kv_cache_memory",
    "training_throughput",
    "training_attention",
    "training_memory",
    "rollout_speed",
    "sampling_steps",
    "inference_path",
    "estimate_calibration",
]


def bench_targets():
    return expand("benchmarks/results/{bench}.{ext}", bench=BENCH_NAMES, ext=["json", "png"])


# --- targets ----------------------------------------------------------------------------------------------------
def data_targets():
    return [
        *expand("data/splits/{split}.txt", split=["train", "val", "test"]),
        *expand("data/frames/{name}.h5", name=PROTEINS),
        *expand("data/features/{featurizer}/{name}.h5", featurizer=FEATURIZER, name=PROTEINS),
    ]


def all_targets():
    return [*data_targets(), f"runs/{RUN}/figures/report.html"]
