rule tables:
    output:
        directory("reports/tables"),
        "reports/README.md",
        "reports/index.html",
    input:
        expand("metrics/{variant}/val.json", variant=VARIANTS),
        expand("metrics/{variant}/val_bootstrap.json", variant=VARIANTS),
        expand("metrics/{variant}/test-dev.json", variant=VARIANTS),
        "reports/figures",  # reports/README.md links the figures: build them first
        "reports/test-dev-server",
        "pep/reports",
    params:
        settings=settings("profile", "data.source", "train.seeds", "profiles"),
    localrule: True
    log:
        "logs/tables.log",
    conda:
        "../../environment.yml"
    shell:
        "pep tables 2>&1 | tee {log}"


rule figures:
    output:
        "reports/plots/training_curves.csv",
        directory("reports/figures"),
    input:
        expand("metrics/{variant}/val.json", variant=VARIANTS),
        expand("metrics/{variant}/val_bootstrap.json", variant=VARIANTS),
        expand("results/{variant}", variant=VARIANTS),
        expand("runs/{variant}", variant=VARIANTS),
        DATA,
        "pep/reports",
    params:
        settings=settings("profile", "data.source", "train.seeds", "profiles"),
    localrule: True
    log:
        "logs/figures.log",
    conda:
        "../../environment.yml"
    shell:
        "pep figures 2>&1 | tee {log}"
