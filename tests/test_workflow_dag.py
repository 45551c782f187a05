"""The planned DAG: lint, formatting, run names, job counts and stage routing (dry runs only)."""

import re
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from conftest import BIN, REPO, subprocess_env

from lalm_slu.config.layered import load_config

RULE_FILES = sorted((REPO / "workflow/rules").glob("*.smk"))
# The speech splits the default grid uses (as job wildcards).
DEFAULT_GRID_SPEECH = {
    "corpus=slurp, lang=en, split=train",
    "corpus=slurp, lang=en, split=test",
    "corpus=xsid, lang=en, split=train",
    "corpus=xsid, lang=de, split=dev",
    "corpus=xsid, lang=de, split=test",
}


def prepare(copy, config=None):
    """Stand-ins for the raw data and the model so that a dry run can plan every job."""
    for path in ("data/massive/en-US.jsonl", "data/xsid/README"):
        (copy.root / path).parent.mkdir(parents=True, exist_ok=True)
        (copy.root / path).touch()
    (copy.root / "models/demo-qwen2-audio").mkdir(parents=True)
    if config is not None:
        (copy.root / "config.yaml").write_text(yaml.safe_dump(config))


def planned_jobs(copy, *args):
    """(rule, wildcards) of every job a dry run would execute."""
    result = copy.snakemake("--dry-run", *args)
    output = result.stdout + result.stderr
    jobs = []
    for line in output.splitlines():
        rule = re.match(r"(?:local)?rule (\w+):$", line)
        if rule:
            jobs.append([rule.group(1), ""])
        elif line.startswith("    wildcards: ") and jobs:
            jobs[-1][1] = line.removeprefix("    wildcards: ")
    return [tuple(job) for job in jobs]


def test_snakemake_lint_reports_nothing(workflow_copy):
    prepare(workflow_copy)
    result = workflow_copy.snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_snakefile_and_rules_are_snakefmt_clean():
    result = subprocess.run(
        [str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_files_import_nothing_heavy():
    heavy = ("torch", "transformers", "pandas", "numpy")
    package_modules = set()
    for path in [REPO / "Snakefile", *RULE_FILES]:
        for line in path.read_text().splitlines():
            assert not re.match(rf"\s*(import|from)\s+({'|'.join(heavy)})\b", line), f"{path.name}: {line.strip()}"
            package_modules.update(re.findall(r"^\s*from\s+(lalm_slu[\w.]*)\s+import", line))
    # Package modules planning imports must be plain Python too.
    imports = "".join(f"import {module}; " for module in sorted(package_modules))
    code = f"import sys; {imports}print(sorted(set({heavy!r}) & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_every_rule_has_a_log_and_a_verb_noun_name():
    for path in RULE_FILES:
        text = path.read_text()
        for name, body in re.findall(r"^rule (\w+):\n((?:    .*\n|\n)*)", text, re.MULTILINE):
            assert "_" in name, f"{name} is not verb_noun"
            assert "\n    log:" in "\n" + body, f"rule {name} has no log"


def test_rules_take_every_results_and_resources_path_from_planning_paths():
    # One source per path: a rule's outputs and the input functions of the jobs that read them both come from
    # lalm_slu.planning.paths (logs, which nothing reads, stay in the rules).
    for path in [REPO / "Snakefile", *RULE_FILES]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not re.search(r"[\"'](results|resources)/", line), f"{path.name}:{number}: {line.strip()}"


def test_a_budget_file_is_planned_only_under_its_canonical_label(workflow_copy):
    prepare(workflow_copy)
    budgets = "results/budgets/slurp/en/train/seed0"
    assert sorted(planned_jobs(workflow_copy, f"{budgets}/5.txt")) == [
        ("prepare_corpus", "corpus=slurp, lang=en"),
        ("subsample_budget", "corpus=slurp, lang=en, split=train, seed=0, budget=5"),
    ]
    result = workflow_copy.snakemake("--dry-run", f"{budgets}/05.txt", check=False)
    assert result.returncode != 0
    assert "MissingRuleException" in result.stdout + result.stderr


def test_default_grid_plans_every_run_once_with_its_name(workflow_copy):
    prepare(workflow_copy)
    jobs = planned_jobs(workflow_copy)
    runs = {wildcards.removeprefix("run=") for rule, wildcards in jobs if rule == "finetune_model"}
    mixing = ("direct_mixing", "curriculum", "behaviour_imitation", "interleaving", "mtbi")
    expected = set()
    for seed in (0, 1, 2):  # three seeds by default, for means and spreads over seeds
        expected |= {f"slurp-en_text_only_b0_s{seed}", f"slurp-en_oracle_b100_s{seed}"}
        expected |= {f"slurp-en_{scheme}_b{b}_s{seed}" for scheme in mixing for b in (1, 5, 25)}
        expected |= {f"xsid-en2de_direct_mixing_b{b}_s{seed}" for b in ("0", "10shot")}
        expected |= {f"xsid-de_oracle_b100_s{seed}"}
    assert runs == expected
    counts = Counter(rule for rule, _ in jobs)
    assert counts["decode_test_set"] == len(expected)  # one job decodes speech, text and cascade input
    assert counts["score_predictions"] == 3 * len(expected)
    assert counts["aggregate_metrics"] == counts["make_tables"] == counts["make_figures"] == 1
    assert "build_demo_model" not in counts and "pretrain_demo_model" not in counts


def test_only_needed_speech_is_synthesized(workflow_copy):
    prepare(workflow_copy)
    synthesized = {w for rule, w in planned_jobs(workflow_copy) if rule == "synthesize_speech"}
    # Source speech for training, target dev (training) and test speech; no unused splits.
    assert synthesized == DEFAULT_GRID_SPEECH


def test_recorded_corpora_are_ingested_not_synthesized(workflow_copy):
    config = load_config(workdir=REPO)
    config["corpora"]["slurp"].update(speech="recorded", audio_root="data/slurp/audio")
    config["alignment"]["models"]["en"] = {"hub_id": "facebook/wav2vec2-base-960h"}
    prepare(workflow_copy, config)
    jobs = planned_jobs(workflow_copy)
    assert {w for rule, w in jobs if rule == "ingest_audio"} == {
        "corpus=slurp, lang=en, split=train",
        "corpus=slurp, lang=en, split=test",
    }
    # Interleaving schemes read its training speech with word times from a forced alignment.
    assert {w for rule, w in jobs if rule == "align_words"} == {"corpus=slurp, lang=en, split=train"}
    assert {w for rule, w in jobs if rule == "download_alignment_model"} == {"lang=en"}
    assert all("corpus=xsid" in w for rule, w in jobs if rule == "synthesize_speech")


def test_the_shipped_model_needs_no_download(workflow_copy):
    prepare(workflow_copy)
    assert "download_model" not in Counter(rule for rule, _ in planned_jobs(workflow_copy))


def test_a_hub_model_is_downloaded_once_with_its_settings_quoted(workflow_copy):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["model"].update(path="resources/models/Qwen2 Audio", hub_id="Qwen/Qwen2-Audio-7B-Instruct", revision="refs/pr/1")
    prepare(workflow_copy, config)
    output = workflow_copy.snakemake("--dry-run", "--printshellcmds").stdout
    assert Counter(rule for rule, _ in planned_jobs(workflow_copy))["download_model"] == 1
    (command,) = [line for line in output.splitlines() if "lalm_slu download-model" in line]
    assert "--hub-id Qwen/Qwen2-Audio-7B-Instruct --revision refs/pr/1 --out-dir 'resources/models/Qwen2 Audio'" in command


def test_demo_model_is_built_only_on_request(workflow_copy):
    prepare(workflow_copy)
    rules = Counter(rule for rule, _ in planned_jobs(workflow_copy, "pretrain_demo_model"))
    assert rules["build_demo_model"] == rules["pretrain_demo_model"] == 1
    # slurp/en, xsid/en, xsid/de, xsid/it text, in the demo model's own manifests
    assert rules["prepare_demo_model_text"] == 4 and "prepare_corpus" not in rules
    assert "synthesize_speech" not in rules  # pretraining speaks its own sentences
    assert "finetune_model" not in rules


def test_continued_pretraining_rebuilds_the_whole_recipe_with_uncapped_text(workflow_copy):
    prepare(workflow_copy)
    result = workflow_copy.snakemake("--dry-run", "--printshellcmds", "continue_demo_model")
    output = result.stdout + result.stderr
    rules = Counter(rule for rule, _ in planned_jobs(workflow_copy, "continue_demo_model"))
    assert rules == Counter({"prepare_demo_model_text": 4, "build_demo_model": 1, "pretrain_demo_model": 1,
                             "continue_demo_model": 1})
    command = next(line for line in output.splitlines() if "--out-dir results/demo_model/continued" in line)
    assert "--model-dir results/demo_model/pretrained" in command
    # Both continuation stages go to one job, in order.
    assert command.index('"instruction_steps": 2500') < command.index('"instruction_steps": 1500')
    # The grid caps MASSIVE en-US at 1,000 train sentences; the demo model reads all of them.
    slurp = next(line for line in output.splitlines() if "prepare-corpus" in line and "--corpus slurp" in line)
    assert "--max-utterances" not in slurp


@pytest.mark.parametrize("target", ["results/mixtures/slurp-en_direct_mixing_b7_s0.parquet"])
def test_runs_outside_the_grid_are_not_buildable(workflow_copy, target):
    prepare(workflow_copy)
    result = workflow_copy.snakemake("--dry-run", target, check=False)
    assert result.returncode != 0
    assert "MissingRuleException" in result.stdout + result.stderr


def test_hub_corpora_are_downloaded_once_before_preparation(workflow_copy):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["corpora"]["smassive"] = {
        "reader": "speech_massive_hub",
        "source": "FBK-MT/Speech-MASSIVE",
        "languages": ["fr", "de"],
        "options": {"cache_dir": "resources/hub", "config": "fr-FR"},
        "download": {"corpus": "speech_massive", "locales": ["fr-FR", "de-DE"]},
        "speech": "recorded",
        "audio_root": "resources/hub/audio",
    }
    config["grid"] = {"monolingual": [{"corpus": "smassive", "lang": "fr", "schemes": ["text_only"]}]}
    prepare(workflow_copy, config)
    result = workflow_copy.snakemake("--dry-run", "--printshellcmds")
    output = result.stdout + result.stderr
    jobs = Counter(rule for rule, _ in planned_jobs(workflow_copy))
    assert jobs["download_corpus"] == 1 and jobs["prepare_corpus"] == 1 and jobs["ingest_audio"] == 2
    assert "download --corpus speech_massive --cache-dir resources/hub --locales fr-FR de-DE" in output
    assert "--source FBK-MT/Speech-MASSIVE" in output and "--option cache_dir=resources/hub config=fr-FR" in output


def planned_commands(copy) -> list[str]:
    result = copy.snakemake("--dry-run", "--printshellcmds", "--forceall")
    return [line for line in (result.stdout + result.stderr).splitlines() if "python -m lalm_slu" in line]


def command_arguments(commands, command_name, run) -> dict[str, str]:
    """--option value pairs of the planned `lalm-slu <command_name>` job of `run`."""
    import shlex

    line = next(c for c in commands if f" {command_name} " in c and run in c)
    words = shlex.split(line.split(">")[0])
    return {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}


def test_commands_receive_the_run_settings_and_score_metadata(workflow_copy):
    import json

    prepare(workflow_copy)
    commands = planned_commands(workflow_copy)

    def arguments(command_name, run):
        return command_arguments(commands, command_name, run)

    settings = json.loads(arguments("finetune", "xsid-en2de_direct_mixing_b10shot_s0")["--settings"])
    assert settings["training"]["seed"] == 0 and settings["scheme"]["name"] == "direct_mixing"
    assert set(settings) == {"model", "training", "scheme", "prompt"}
    score = arguments("score", "xsid-en2de_direct_mixing_b10shot_s0")
    meta = json.loads(score["--meta"])
    # The test set and input scored are the predictions file's: {testset}.{modality}.jsonl.
    assert f"{meta.pop('testset')}.{meta.pop('modality')}.jsonl" == score["--pred"].rsplit("/", 1)[-1]
    assert meta == {"run": "xsid-en2de_direct_mixing_b10shot_s0", "corpus": "xsid", "scheme": "direct_mixing",
                    "source": "en", "target": "de", "target_text": True, "budget": "10shot", "seed": 0}  # fmt: skip
    decode = json.loads(arguments("decode", "slurp-en_oracle_b100_s0")["--settings"])
    # Training and decoding read the one configured instruction.
    instruction = yaml.safe_load((REPO / "config.yaml").read_text())["prompt"]["instruction"]
    assert decode["instruction"] == settings["prompt"]["instruction"] == instruction
    assert "modalities" not in decode
    # Threads are a resource: they reach the process as --threads and never identify (or re-run) a run.
    resources = yaml.safe_load((REPO / "config.yaml").read_text())["resources"]
    assert arguments("finetune", "slurp-en_oracle_b100_s0")["--threads"] == str(resources["finetune"]["threads"])
    assert arguments("decode", "slurp-en_oracle_b100_s0")["--threads"] == str(resources["decode"]["threads"])
    assert "threads" not in settings["training"] and "threads" not in decode


def test_an_entry_scheme_settings_replace_the_scheme_block_for_its_runs_only(workflow_copy):
    import json

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    phases = [{"phase": 1, "epochs": 7, "learning_rate": 5.0e-4, "warmup_ratio": 0.1}]
    xsid_entry = next(e for e in config["grid"]["monolingual"] if e["corpus"] == "xsid")
    xsid_entry["scheme_settings"] = {"oracle": {"phases": phases}}
    prepare(workflow_copy, config)
    commands = planned_commands(workflow_copy)

    def scheme(run):
        return json.loads(command_arguments(commands, "finetune", run)["--settings"])["scheme"]

    assert scheme(f"xsid-{xsid_entry['lang']}_oracle_b100_s0")["phases"] == phases
    slurp_oracle = scheme("slurp-en_oracle_b100_s0")
    assert slurp_oracle["phases"] == config["schemes"]["oracle"]["phases"] != phases
    assert scheme(f"xsid-{xsid_entry['lang']}_oracle_b100_s0")["trainable_modules"] == slurp_oracle["trainable_modules"]


def test_curriculum_budgets_of_a_seed_continue_from_one_shared_first_phase_job(workflow_copy):
    import json

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["grid"]["seeds"] = [0, 1]
    config["grid"]["crosslingual"][0]["schemes"] = ["direct_mixing", "curriculum"]
    prepare(workflow_copy, config)
    jobs = planned_jobs(workflow_copy)
    prefixes = sorted(w for rule, w in jobs if rule == "finetune_prefix")
    assert prefixes == [f"prefix={data}_curriculum_phase1_s{seed}" for data in ("slurp-en", "xsid-en2de")
                        for seed in (0, 1)]  # fmt: skip
    commands = planned_commands(workflow_copy)
    curriculum = config["schemes"]["curriculum"]
    for data, budgets in (("slurp-en", config["grid"]["monolingual"][0]["budgets"]), ("xsid-en2de", ["0", "10shot"])):
        for seed in (0, 1):
            prefix = f"{data}_curriculum_phase1_s{seed}"
            for budget in budgets:
                run = f"{data}_curriculum_b{budget}_s{seed}"
                arguments = command_arguments(commands, "finetune", f"--mixture results/mixtures/{run}.parquet")
                assert arguments["--start-from"] == f"results/prefixes/{prefix}/checkpoint"
            job = command_arguments(commands, "finetune", f"--mixture results/prefixes/{prefix}/mixture.parquet")
            assert job["--output"] == "checkpoint" and job["--out-dir"] == f"results/prefixes/{prefix}/checkpoint"
            settings = json.loads(job["--settings"])
            assert settings["scheme"]["phases"] == curriculum["phases"][:1] and settings["training"]["seed"] == seed
            mix = command_arguments(commands, "mix-training-set", f"results/prefixes/{prefix}/mixture.parquet")
            assert mix["--phases"] == "1" and mix["--seed"] == str(seed)
            # The first phase holds no budgeted speech: the prefix is mixed with none.
            speech_ids = mix["--target-speech-ids" if data.startswith("xsid") else "--speech-ids"]
            assert speech_ids.endswith(f"seed{seed}/0.txt")
    others = [c for c in commands if " finetune " in c and "_curriculum_" not in c]
    assert others and not [c for c in others if "--start-from" in c]


def audio_frames_arguments(commands, command_name, run, testset_modality=""):
    """The files after --audio-frames in the planned `lalm-slu <command_name>` job of `run` (none: [])."""
    import shlex

    line = next(c for c in commands if f" {command_name} " in c and run in c and testset_modality in c)
    words = shlex.split(line.split(">")[0])
    if "--audio-frames" not in words:
        return []
    values = words[words.index("--audio-frames") + 1 :]
    return values[: next((i for i, w in enumerate(values) if w.startswith("--")), len(values))]


def test_frozen_audio_runs_and_speech_decodes_read_frames_encoded_once_per_split(workflow_copy):
    prepare(workflow_copy)
    encoded = {w for rule, w in planned_jobs(workflow_copy) if rule == "encode_audio"}
    assert encoded == DEFAULT_GRID_SPEECH  # each speech split once, whatever number of runs read it
    commands = planned_commands(workflow_copy)
    frames = "results/audio_frames/{}.safetensors".format
    assert audio_frames_arguments(commands, "finetune", "slurp-en_text_only_b0_s0") == []
    assert audio_frames_arguments(commands, "finetune", "slurp-en_direct_mixing_b5_s0") == [frames("slurp/en/train")]
    # Cross-lingual: all source speech; target speech only with a budget.
    assert audio_frames_arguments(commands, "finetune", "xsid-en2de_direct_mixing_b0_s0") == [frames("xsid/en/train")]
    assert audio_frames_arguments(commands, "finetune", "xsid-en2de_direct_mixing_b10shot_s0") == [
        frames("xsid/en/train"),
        frames("xsid/de/dev"),
    ]
    # A run's one decode job reads the frames for its speech input; a scheme that trains the projector reads none.
    assert audio_frames_arguments(commands, "decode", "slurp-en_text_only_b0_s0", ".speech.") == [frames("slurp/en/test")]
    assert audio_frames_arguments(commands, "decode", "slurp-en_behaviour_imitation_b5_s0", ".speech.") == []


def test_no_frames_are_shared_when_turned_off_or_when_a_scheme_trains_the_projector(workflow_copy):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["schemes"]["direct_mixing"] = {**config["schemes"]["text_only"],
                                          "trainable_modules": ["multi_modal_projector", "language_model"]}
    prepare(workflow_copy, config)
    commands = planned_commands(workflow_copy)
    assert audio_frames_arguments(commands, "finetune", "slurp-en_direct_mixing_b5_s0") == []
    assert audio_frames_arguments(commands, "decode", "slurp-en_direct_mixing_b5_s0", ".speech.") == []
    assert audio_frames_arguments(commands, "finetune", "slurp-en_oracle_b100_s0") != []
    config["audio_frames"]["precompute"] = False
    (workflow_copy.root / "config.yaml").write_text(yaml.safe_dump(config))
    assert "encode_audio" not in {rule for rule, _ in planned_jobs(workflow_copy)}
    assert not any("--audio-frames results" in c for c in planned_commands(workflow_copy))


def test_compare_schemes_runs_once_on_every_prediction_and_feeds_the_tables(workflow_copy):
    import shlex

    prepare(workflow_copy)
    assert Counter(rule for rule, _ in planned_jobs(workflow_copy))["compare_schemes"] == 1
    commands = planned_commands(workflow_copy)
    words = shlex.split(next(c for c in commands if " compare-schemes " in c).split(">")[0])
    predictions = words[words.index("--predictions") + 1 : words.index("--gold")]
    scores = [w for w in shlex.split(next(c for c in commands if " aggregate " in c).split(">")[0]) if w.endswith(".json")]
    assert sorted(predictions) == sorted(p.replace("/metrics/", "/predictions/") + "l" for p in scores)
    assert words[words.index("--gold") + 1 : words.index("--gold") + 3] == [
        "slurp-en=results/manifests/slurp/en/test.parquet",
        "xsid-de=results/manifests/xsid/de/test.parquet",
    ]
    pairs = [words[i + 1 : i + 3] for i, word in enumerate(words) if word == "--scheme-pair"]
    configured = yaml.safe_load((REPO / "config.yaml").read_text())["comparisons"]["scheme_pairs"]
    assert pairs == configured and ["direct_mixing", "curriculum"] in pairs
    assert command_arguments(commands, "tables", "")["--comparisons"] == "results/comparisons.csv"


def test_configured_scheme_and_input_pairs_reach_the_comparisons(workflow_copy):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["comparisons"].update(scheme_pairs=[], modality_pairs=[["text", "speech"]], bootstrap=50, seed=3)
    prepare(workflow_copy, config)
    command = next(c for c in planned_commands(workflow_copy) if " compare-schemes " in c)
    assert "--scheme-pair" not in command and "--modality-pair text speech" in command
    assert "--bootstrap 50 --seed 3" in command
