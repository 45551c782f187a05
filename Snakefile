# lalm-slu: fine-tuning an audio LLM for spoken language understanding with scarce
# speech data. The DAG is described in docs/ARCHITECTURE.md.

from snakemake.utils import min_version, validate

min_version("9.0")


# The demo model's recipe first: config.yaml and --configfile override it key by key.
configfile: "workflow/configs/demo_model.yaml"
configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/corpora.smk"
include: "workflow/rules/speech.smk"
include: "workflow/rules/audio_frames.smk"
include: "workflow/rules/budgets.smk"
include: "workflow/rules/mixtures.smk"
include: "workflow/rules/imitation.smk"
include: "workflow/rules/demo_model.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/decode.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets(),
    localrule: True
