rule tables:
    output:
        report(directory("reports/tables"), patterns=["{name}.csv"], caption="../report/tables.rst",
               category="Tables"),
        "reports/README.md",
        "reports/index.html",
    input:
        expand("metrics/{variant}/val.json", variant=VARIANTS),
        expand("metrics/{variant}/val_bootstrap.json", variant=VARIANTS),
        expand("metrics/{variant}/test-dev.json", variant=VARIANTS),
        expand("metrics/{variant}/mechanisms.json", variant=VARIANTS),
        "reports/figures",  # reports/README.md links the figures: build them first
        "reports/test-dev-server",
        "pep/reports",
        "settings/reports.json",
    localrule: True
    log:
        "logs/tables.log",
    shell:
        "pep tables 2>&1 | tee {log}"


rule figures:
    output:
        "reports/plots/training_curves.csv",
        report(directory("reports/figures"), patterns=["{name}.png"], caption="../report/figures.rst",
               category="Figures"),
    input:
        expand("metrics/{variant}/val.json", variant=VARIANTS),
        expand("metrics/{variant}/val_bootstrap.json", variant=VARIANTS),
        expand("results/{variant}", variant=VARIANTS),
        expand("runs/{variant}/seed{seed}", variant=VARIANTS, seed=SEEDS),
        DATA,
        "pep/reports",
        "settings/reports.json",
    localrule: True
    log:
        "logs/figures.log",
    shell:
        "pep figures 2>&1 | tee {log}"
