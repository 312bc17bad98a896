rule train:
    output:
        # kept through a failure and not cleared before a rerun (with --keep-incomplete, set in
        # both profiles), so that the rerun resumes from the last checkpoint
        update(directory("runs/{variant}")),
    input:
        DATA,
        "reports/data/validate_train.json",
        "pep/data/coco.py",
        "pep/distributed.py",
        "pep/engine/checkpoint.py",
        "pep/engine/data.py",
        "pep/engine/schedule.py",
        "pep/engine/train.py",
        "pep/model",
    params:
        settings=variant_settings("profile", "data", "model", "variants.{variant}", "train", "profiles"),
    wildcard_constraints:
        variant="|".join(VARIANTS),
    threads: job_threads("train")
    resources:
        # `pep train` starts torchrun itself when the job holds several GPUs
        gpu=cluster("train", "gpus"),
        cpus_per_gpu=cluster("train", "cpus_per_gpu"),
        cpus_per_task=cpus_per_task("train"),
        mem_mb=cluster("train", "mem_mb"),
        runtime=cluster("train", "runtime_min"),
    log:
        "logs/train/{variant}.log",
    conda:
        "../../environment.yml"
    shell:
        "pep train --variant {wildcards.variant} 2>&1 | tee {log}"
