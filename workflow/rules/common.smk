# Shared by every rule: the effective parameters of the chosen profile, and each job's
# settings file. A job depends on its own settings/<job>.json, which holds the settings that can
# change its result (pep.stage_settings); the files are refreshed here, when Snakemake reads
# the workflow, and rewritten only when their content changes: Snakemake reruns a job when its
# file is newer than its outputs, as DVC reruns it when the file's hash changes.
from pathlib import Path

from pep.config import VARIANTS, load_params
from pep.stage_settings import refresh

EFFECTIVE = load_params(Path(workflow.basedir) / "params.yaml")
refresh(EFFECTIVE)
PROFILE = EFFECTIVE["profile"]
SEEDS = EFFECTIVE["train"]["seeds"]
DATA = f"data/{PROFILE}"


def cluster(job, key):
    """What a job asks of SLURM (params.yaml `cluster`; the partition is in the slurm profile)."""
    return EFFECTIVE["cluster"][job].get(key, 1)  # only `nodes` may be left out (evaluate)


def slurm_gpus(job):
    """GPUs of the whole job: `cluster.<job>.gpus` is per node."""
    return cluster(job, "gpus") * cluster(job, "nodes")


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


def stop_signal(job):
    """sbatch's warning ahead of the time limit: SIGTERM, on which training checkpoints and
    exits 75 for Snakemake's retries to resubmit it (pep.engine.preemption)."""
    return f"--signal=TERM@{EFFECTIVE['cluster'][job].get('stop_before_limit_s', 300)}"
