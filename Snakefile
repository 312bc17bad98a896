# The pipeline, as Snakemake runs it: the same stages as dvc.yaml, with the same commands,
# inputs and outputs (tests/test_workflow.py fails when the two differ).
#
#   snakemake --profile workflow/profiles/default           # this machine
#   snakemake --profile workflow/profiles/slurm             # a SLURM cluster, one job per rule
#
# Every rule runs one `pep` command, which reads params.yaml itself: switch the recipe with the
# `profile` line there (not with --config, which the `pep` commands would not see).
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "params.yaml"


validate(config, "workflow/schemas/params.schema.yaml")


# `snakemake --report report.html`: the tables and figures, with each job's provenance
report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/reports.smk"


rule all:
    input:
        "reports/tables",
        "reports/README.md",
        "reports/figures",
        "reports/plots/training_curves.csv",
        expand("submissions/{variant}", variant=VARIANTS),
    default_target: True
