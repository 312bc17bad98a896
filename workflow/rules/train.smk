rule train:
    output:
        # kept through a failure and not cleared before a rerun (with --keep-incomplete, set in
        # both profiles), so that the rerun resumes from the last checkpoint
        update(directory("runs/{variant}/seed{seed}")),
    input:
        "settings/train-{variant}.json",  # every seed's
        DATA,
        "reports/data/validate_train.json",
        "pep/data/coco.py",
        "pep/distributed.py",
        "pep/engine/checkpoint.py",
        "pep/engine/data.py",
        "pep/engine/schedule.py",
        "pep/engine/train.py",
        "pep/model",
    wildcard_constraints:
        variant="|".join(VARIANTS),
        seed=r"\d+",
    threads: job_threads("train")
    resources:
        # `pep train` starts torchrun itself when the job holds several GPUs
        nodes=cluster("train", "nodes"),
        gpu=slurm_gpus("train"),
        cpus_per_gpu=cluster("train", "cpus_per_gpu"),
        cpus_per_task=cpus_per_task("train"),
        mem_mb=cluster("train", "mem_mb"),
        runtime=cluster("train", "runtime_min"),
        # a set-resources `train: slurm_extra` of the slurm profile replaces this: keep it there
        slurm_extra=stop_signal("train"),
    log:
        "logs/train/{variant}-seed{seed}.log",
    shell:
        # SLURM signals every process of the job step: the shell and tee ignore the stop signals
        # (and so outlive pep), which stops after its iteration, checkpoints and exits 75
        "trap '' TERM USR1; "
        "pep train --variant {wildcards.variant} --seed {wildcards.seed} 2>&1 | tee {log}"
