rule data:
    output:
        directory(DATA),
    input:
        "pep/data/prepare.py",
        "pep/data/synth.py",
        "pep/data/download.py",
    params:
        settings=settings("profile", "data", "profiles"),
    log:
        "logs/data.log",
    conda:
        "../../environment.yml"
    shell:
        "pep data prepare --quiet 2>&1 | tee {log}"


rule validate:
    output:
        "reports/data/validate_{split}.json",
    input:
        DATA,
        "pep/data/validate.py",
    params:
        settings=settings("profile", "data", "profiles"),
    wildcard_constraints:
        split="train|val",
    log:
        "logs/validate/{split}.log",
    conda:
        "../../environment.yml"
    shell:
        "pep data validate --quiet --split {wildcards.split} --report {output} 2>&1 | tee {log}"
