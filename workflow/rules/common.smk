# Shared by every rule: the effective parameters of the chosen profile, and the one helper that
# tells Snakemake which settings a job's result depends on (as dvc.yaml's `params` lists do).
from pep.config import VARIANTS, effective_params

PROFILE = config["profile"]
EFFECTIVE = effective_params(config, PROFILE)
SEEDS = EFFECTIVE["train"]["seeds"]
DATA = f"data/{PROFILE}"


def settings(*keys):
    """The values of these params.yaml keys: as a job's `params`, a change to any of them reruns
    the job (Snakemake's default rerun trigger `params`)."""
    values = {}
    for key in keys:
        value = config
        for part in key.split("."):
            value = value[part]
        values[key] = value
    return values


def variant_settings(*keys):
    """settings() for the per-variant rules, where `{variant}` in a key stands for the job's variant."""
    return lambda wildcards: settings(*(key.format(variant=wildcards.variant) for key in keys))


def cluster(job, key):
    """What a job asks of SLURM (params.yaml `cluster`; the partition is in the slurm profile)."""
    return EFFECTIVE["cluster"][job][key]


def job_threads(job):
    """The CPUs a job holds, as its threads: Snakemake sets OMP_NUM_THREADS (torch's thread
    count) to them, and caps them at --cores on one machine. Float sums depend on the thread
    count, so the same count gives the same trained model as `dvc repro` with as many threads."""
    gpus = cluster(job, "gpus")
    return cluster(job, "cpus") if gpus == 0 else gpus * cluster(job, "cpus_per_gpu")


def cpus_per_task(job):
    """CPUs of a job without GPUs; 0 ("not set") for a GPU job, whose CPUs come from
    cpus_per_gpu (the slurm plugin lets a set cpus_per_task win over cpus_per_gpu)."""
    return cluster(job, "cpus") if cluster(job, "gpus") == 0 else 0
