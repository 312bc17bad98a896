rule data:
    output:
        directory(DATA),
    input:
        "settings/data.json",
        "pep/data/prepare.py",
        "pep/data/synth.py",
        "pep/data/download.py",
    log:
        "logs/data.log",
    shell:
        "pep data prepare --quiet 2>&1 | tee {log}"


rule validate:
    output:
        "reports/data/validate_{split}.json",
    input:
        "settings/validate-{split}.json",
        DATA,
        "pep/data/report.py",
        "pep/data/validate",
        "pep/data/crowding.py",  # which instances own a grid cell (the data report counts them)
        "pep/model/perceive.py",
    wildcard_constraints:
        split="train|val",
    log:
        "logs/validate/{split}.log",
    shell:
        "pep data validate --quiet --split {wildcards.split} --report {output} 2>&1 | tee {log}"
