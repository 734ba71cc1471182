# arena-pref: predict which of two chatbot answers a person prefers (LMSYS Chatbot Arena).
#
#   snakemake -j2 results/submission.csv
#
# Paths in the config resolve against the working directory (-d); the workflow's own files
# against this Snakefile. Without --configfile the embedded CPU demo (config.yaml) runs.


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/judge.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/blend.smk"
include: "workflow/rules/kaggle.smk"


rule all:
    default_target: True
    input:
        final_targets(),
