rule evaluate:
    output:
        directory("results/{variant}"),
        "metrics/{variant}/val_per_category.json",
        "metrics/{variant}/val_bootstrap.json",
        "metrics/{variant}/val.json",
    input:
        "settings/evaluate-{variant}.json",
        expand("runs/{{variant}}/seed{seed}", seed=SEEDS),  # every seed's run
        DATA,
        "reports/data/validate_val.json",
        "pep/evaluation.py",
        "pep/engine/evaluate.py",
        "pep/model/postprocess.py",
    wildcard_constraints:
        variant="|".join(VARIANTS),
    threads: job_threads("evaluate")
    resources:
        gpu=cluster("evaluate", "gpus"),
        cpus_per_gpu=cluster("evaluate", "cpus_per_gpu"),
        cpus_per_task=cpus_per_task("evaluate"),
        mem_mb=cluster("evaluate", "mem_mb"),
        runtime=cluster("evaluate", "runtime_min"),
    log:
        "logs/evaluate/{variant}.log",
    shell:
        "pep evaluate --variant {wildcards.variant} --quiet 2>&1 | tee {log}"


rule mechanisms:
    output:
        "metrics/{variant}/mechanisms.json",
    input:
        "settings/mechanisms-{variant}.json",
        expand("runs/{{variant}}/seed{seed}", seed=SEEDS),  # every seed's run
        DATA,
        "reports/data/validate_val.json",
        "pep/evaluation.py",
        "pep/engine/mechanisms.py",
        "pep/data/crowding.py",
        "pep/model/postprocess.py",
    wildcard_constraints:
        variant="|".join(VARIANTS),
    threads: job_threads("evaluate")
    resources:
        gpu=cluster("evaluate", "gpus"),
        cpus_per_gpu=cluster("evaluate", "cpus_per_gpu"),
        cpus_per_task=cpus_per_task("evaluate"),
        mem_mb=cluster("evaluate", "mem_mb"),
        runtime=cluster("evaluate", "runtime_min"),
    log:
        "logs/mechanisms/{variant}.log",
    shell:
        "pep mechanisms --variant {wildcards.variant} --quiet 2>&1 | tee {log}"


rule predict:
    output:
        directory("submissions/{variant}"),
        "metrics/{variant}/test-dev.json",
    input:
        "settings/predict-{variant}.json",
        expand("runs/{{variant}}/seed{seed}", seed=SEEDS),  # the first seed submits; all are scored
        DATA,
        "pep/evaluation.py",
        "pep/engine/evaluate.py",
        "pep/model/postprocess.py",
    wildcard_constraints:
        variant="|".join(VARIANTS),
    threads: job_threads("evaluate")
    resources:
        gpu=cluster("evaluate", "gpus"),
        cpus_per_gpu=cluster("evaluate", "cpus_per_gpu"),
        cpus_per_task=cpus_per_task("evaluate"),
        mem_mb=cluster("evaluate", "mem_mb"),
        runtime=cluster("evaluate", "runtime_min"),
    log:
        "logs/predict/{variant}.log",
    shell:
        "pep predict --variant {wildcards.variant} --split test-dev --quiet 2>&1 | tee {log}"
