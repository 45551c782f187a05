# lalm-slu: fine-tuning an audio LLM for spoken language understanding with scarce
# speech data. The DAG is described in docs/ARCHITECTURE.md.

import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

# Planning uses this checkout's package (plain-Python modules only), whatever is installed.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from lalm_slu.config.layered import layered_config

# The demo model's recipe, config.yaml over it, each --configfile and --config on top, as `lalm-slu plan` reads
# them; a bad key or value stops here, before any job, naming the key and why.
command_line = workflow.config_settings
layers, base_files = layered_config(
    command_line.overwrite_config, bool(command_line.configfiles)
)
config.update(layers)
# The run's header and the report list the files read, as after a `configfile:` directive.
workflow.configfiles.extend(base_files)


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


# A target that is neither a rule nor a file a rule makes stops planning with the likely rule name.
rule explain_target:
    input:
        unknown_target,
    output:
        "{target}",
    log:
        "logs/explain_target/{target}.log",
    wildcard_constraints:
        target=r"[A-Za-z_]\w*",
    localrule: True
